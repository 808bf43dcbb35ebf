"""Moved to :mod:`rpmetric.stores` (``index``: search, ``dedup``: near duplicates, ``knn``: kNN
classification); this name stays so that old imports keep working.
"""

from .stores.dedup import AUTO_APPROX_MIN, DEDUP_METHODS, DEFAULT_PROBES, find_near, group_duplicates, near_pairs
from .stores.index import AUTO_IVF_MIN, AUTO_IVF_MIN_QUERIES, INDEXES, Neighbours, search
from .stores.knn import VOTES, Prediction, knn_classify, knn_vote

__all__ = [
    "INDEXES", "DEDUP_METHODS", "VOTES", "Neighbours", "Prediction", "search", "near_pairs",
    "group_duplicates", "find_near", "knn_vote", "knn_classify", "AUTO_APPROX_MIN", "DEFAULT_PROBES",
    "AUTO_IVF_MIN", "AUTO_IVF_MIN_QUERIES",
]
