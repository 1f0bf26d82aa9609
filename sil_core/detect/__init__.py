"""Statistics that decide whether a change made things worse. Pure Python."""

from .detector import judge
from .tripwire import ConsecutiveFailures, TripwireState, is_outage
from .verdict import Verdict

__all__ = ("ConsecutiveFailures", "TripwireState", "Verdict", "is_outage", "judge")
