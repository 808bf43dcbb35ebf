"""The stores subpackage's move keeps the old import paths working, as the same objects."""

import importlib

import pytest


@pytest.mark.parametrize("old, new", [
    ("rpmetric.store", "rpmetric.stores.store"),
    ("rpmetric.sources", "rpmetric.stores.sources"),
    ("rpmetric.robust_retrieval", "rpmetric.stores.robust"),
])
def test_moved_module_is_the_same_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_retrieval_names_point_at_the_stores_subpackage():
    from rpmetric import retrieval
    from rpmetric.stores import dedup, index, knn

    assert retrieval.search is index.search
    assert retrieval.group_duplicates is dedup.group_duplicates and retrieval.find_near is dedup.find_near
    assert retrieval.knn_classify is knn.knn_classify and retrieval.VOTES == knn.VOTES
    for name in retrieval.__all__:
        assert getattr(retrieval, name) is not None


def test_stores_import_nothing_from_the_cli():
    """Imports run one way: the stores subpackage is below the command line, never above it."""
    import sys

    import rpmetric.stores  # noqa: F401

    for name in ("rpmetric.stores.store", "rpmetric.stores.dedup", "rpmetric.stores.index", "rpmetric.stores.knn"):
        source = open(sys.modules[name].__file__).read()
        assert "from ..cli" not in source and "rpmetric.cli" not in source
