"""Statistics that decide whether a change made things worse. Pure Python."""

from .detector import judge
from .tripwire import ConsecutiveFailures
from .verdict import Verdict

__all__ = ("ConsecutiveFailures", "Verdict", "judge")
