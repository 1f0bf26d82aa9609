"""The Yijing strategy: six engineering lines -> one of 64 hexagrams -> a bounded policy.

Importable as the seed named it (``self_improving_loop.yijing``), here ``sil_core.yijing``.
"""

from .hexagram import CORE_HEXAGRAMS, HEXAGRAMS, Hexagram, HexagramState, identify_hexagram
from .lines import CATEGORIES, DIMENSIONS, LineSignal, classify_error, score_lines
from .policies import CORE_POLICIES, policy_for_hexagram
from .strategy import YijingEvolutionStrategy

__all__ = (
    "CATEGORIES",
    "CORE_HEXAGRAMS",
    "CORE_POLICIES",
    "DIMENSIONS",
    "HEXAGRAMS",
    "Hexagram",
    "HexagramState",
    "LineSignal",
    "YijingEvolutionStrategy",
    "classify_error",
    "identify_hexagram",
    "policy_for_hexagram",
    "score_lines",
)
