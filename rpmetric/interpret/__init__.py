"""Seeing what the metric sees: feature inversion (:func:`invert`) and distance maps
(:func:`distance_map`), built on the metric's public calls (``embed``, ``forward``, ``to_unit``), so
they work on any model of the zoo, on the metric's device.

Example:
    >>> from rpmetric.interpret import distance_map, invert
"""

from .inversion import INITS, cosine, default_jitter, invert, total_variation
from .maps import METHODS, distance_map, window_starts

__all__ = ["invert", "cosine", "total_variation", "default_jitter", "INITS", "distance_map", "METHODS",
           "window_starts"]
