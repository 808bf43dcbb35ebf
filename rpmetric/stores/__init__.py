"""Embedding stores at dataset scale, in data-flow order.

- :mod:`~rpmetric.stores.sources`: folders, path lists, WebDataset tar shards, Parquet files;
- :mod:`~rpmetric.stores.store`: building, resuming and reading a store folder;
- :mod:`~rpmetric.stores.index`: nearest-neighbour search;
- :mod:`~rpmetric.stores.dedup`: near-duplicate pairs and groups, rows near a reference set;
- :mod:`~rpmetric.stores.knn`: kNN classification;
- :mod:`~rpmetric.stores.robust`: attacks on retrieval decisions;
- :mod:`~rpmetric.stores.ray`: the same stores built by a Ray Data pipeline, and ``embed_dataset``
  for users' own Ray pipelines (not imported here: it needs ``pip install "rpmetric[ray]"``).

The old module paths (``rpmetric.store``, ``rpmetric.sources``, ``rpmetric.retrieval``,
``rpmetric.robust_retrieval``) still import and name the same objects.

Example:
    >>> from rpmetric.stores import EmbeddingStore, search, group_duplicates
    >>> import torch
    >>> group_duplicates(torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]]), 0.01)
    [[0, 1]]
"""

from .dedup import DEDUP_METHODS, find_near, group_duplicates, near_pairs
from .index import INDEXES, Neighbours, search
from .knn import VOTES, Prediction, knn_classify, knn_vote
from .store import EmbeddingStore, build_store, embed_images

__all__ = [
    "EmbeddingStore", "build_store", "embed_images", "INDEXES", "Neighbours", "search",
    "DEDUP_METHODS", "near_pairs", "group_duplicates", "find_near", "VOTES", "Prediction",
    "knn_vote", "knn_classify",
]
