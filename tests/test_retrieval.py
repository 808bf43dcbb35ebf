"""Search, duplicate grouping and kNN voting, against brute force in numpy and hand-worked cases."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from rpmetric.stores import dedup, index
from rpmetric.errors import MissingDependencyError
from rpmetric.stores import find_near, group_duplicates, knn_classify, knn_vote, near_pairs, search


def numpy_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos for all pairs, in float64: the independent reference."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - a.astype(np.float64) @ b.astype(np.float64).T


@pytest.fixture
def small_blocks(monkeypatch):
    # Tiny blocks so the blockwise merging in the exact search and the pair scan is exercised.
    for module in (index, dedup):
        monkeypatch.setattr(module, "_QUERY_BLOCK", 7)
        monkeypatch.setattr(module, "_DB_BLOCK", 11)


def unit_angles(*angles):
    """2-d unit vectors at the given angles: 1 - cos between them is known in closed form."""
    return torch.tensor([[math.cos(t), math.sin(t)] for t in angles], dtype=torch.float32)


def test_exact_search_matches_brute_force(small_blocks):
    g = torch.Generator().manual_seed(0)
    db, q = torch.randn(200, 16, generator=g), torch.randn(30, 16, generator=g)
    hits = search(db, q, k=5, index="exact")
    dist = numpy_distances(db.numpy(), q.numpy()).T
    expected = np.argsort(dist, axis=1)[:, :5]
    assert hits.index == "exact"
    assert hits.indices.tolist() == expected.tolist()
    np.testing.assert_allclose(hits.distances.numpy(), np.take_along_axis(dist, expected, 1), atol=1e-6)


def test_exact_and_faiss_give_the_same_neighbours():
    g = torch.Generator().manual_seed(1)
    db, q = torch.randn(500, 32, generator=g).half(), torch.randn(40, 32, generator=g)
    exact = search(db, q, k=10, index="exact")
    flat = search(db, q, k=10, index="faiss")
    assert flat.index == "faiss"
    assert torch.equal(exact.indices, flat.indices)
    torch.testing.assert_close(exact.distances, flat.distances)


def test_ivf_visiting_every_cell_is_exact_and_default_recall_is_high():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(20, 16, generator=g)
    db = centres.repeat_interleave(100, 0) + 0.3 * torch.randn(2000, 16, generator=g)
    q = centres + 0.3 * torch.randn(20, 16, generator=g)
    exact = search(db, q, k=5, index="exact")
    assert torch.equal(search(db, q, k=5, index="ivf", nprobe=10_000).indices, exact.indices)
    approx = search(db, q, k=5, index="ivf")
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(approx.indices.tolist(), exact.indices.tolist())])
    assert recall >= 0.8


def test_auto_is_exact_for_small_stores_and_ivf_for_large_searches(monkeypatch):
    assert search(torch.eye(3), torch.eye(3), k=1).index == "exact"
    monkeypatch.setattr(index, "AUTO_IVF_MIN", 100)
    monkeypatch.setattr(index, "AUTO_IVF_MIN_QUERIES", 20)
    db = torch.randn(200, 8, generator=torch.Generator().manual_seed(4))
    assert search(db, db[:19], k=1).index == "exact"
    assert search(db, db[:20], k=1).index == "ivf"


def test_k_larger_than_the_store_returns_every_row():
    hits = search(unit_angles(0.0, 1.0, 2.0), unit_angles(0.9), k=10)
    assert hits.indices.tolist() == [[1, 0, 2]]
    expected = [1 - math.cos(0.1), 1 - math.cos(0.9), 1 - math.cos(1.1)]
    np.testing.assert_allclose(hits.distances[0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, r"Argument `k` must be an integer >= 1, but got 0"),
    ({"index": "hnsw"}, r"Argument `index` must be one of \('auto', 'exact', 'faiss', 'ivf'\), but got 'hnsw'"),
    ({"index": "ivf", "nprobe": 0}, r"Argument `nprobe` must be at least 1, but got 0"),
    ({"index": "ivf", "nprobe": -3}, r"Argument `nprobe` must be at least 1, but got -3"),
])
def test_search_argument_errors(kwargs, message):
    db = torch.randn(200, 8, generator=torch.Generator().manual_seed(5))  # enough rows to train an IVF index
    with pytest.raises(ValueError, match=message):
        search(db, db[:3], **kwargs)


def test_nprobe_must_be_an_integer():
    with pytest.raises(TypeError, match=r"Argument `nprobe` must be an integer, but got 2.5"):
        search(torch.eye(3), torch.eye(3), index="ivf", nprobe=2.5)


def test_search_shape_errors():
    with pytest.raises(ValueError, match="Argument `database` holds no embeddings"):
        search(torch.zeros(0, 3), torch.eye(3))
    with pytest.raises(ValueError, match=r"Embedding sizes differ \(3 vs 2\)"):
        search(torch.eye(3), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"Argument `queries` must be an \[N, D\] tensor .* but got \(3,\)"):
        search(torch.eye(3), torch.ones(3))


def test_missing_faiss_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install faiss-cpu.*pip install rpmetric\[faiss\]"):
        search(torch.eye(3), torch.eye(3), index="faiss")
    assert search(torch.eye(3), torch.eye(3), index="auto").index == "exact"


def test_near_pairs_hand_worked_and_inclusive():
    # Angles 0, 0.1, 0.2, 1.5: 1 - cos(0.1) = 0.0049958 for neighbours, 1 - cos(0.2) = 0.0199 for 0 and 2.
    emb = unit_angles(0.0, 0.1, 0.2, 1.5)
    i, j, d = near_pairs(emb, 0.006)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 2)]
    np.testing.assert_allclose(d.numpy(), [1 - math.cos(0.1)] * 2, atol=1e-6)
    i, j, _ = near_pairs(emb, 0.0)
    assert len(i) == 0
    i, j, _ = near_pairs(torch.cat([emb, emb[:1]]), 0.0)  # an exact copy is at distance 0, included
    assert list(zip(i.tolist(), j.tolist())) == [(0, 4)]


def test_groups_chain_through_neighbours():
    emb = unit_angles(0.0, 1.5, 0.1, 3.0, 0.2, 1.5)
    assert group_duplicates(emb, 0.006) == [[0, 2, 4], [1, 5]]


def test_groups_match_brute_force_components(small_blocks):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 8, generator=g)
    emb = torch.cat([base, base[:10] + 0.05 * torch.randn(10, 8, generator=g)])
    dist = numpy_distances(emb.numpy(), emb.numpy())
    threshold = 0.01
    # Components by repeated relabelling (a different algorithm from union-find).
    label = np.arange(len(emb))
    adjacent = dist <= threshold
    for _ in range(len(emb)):
        label = np.array([label[adjacent[r]].min() for r in range(len(emb))])
    expected = {}
    for r, lab in enumerate(label):
        expected.setdefault(lab, []).append(r)
    expected = sorted(m for m in expected.values() if len(m) > 1)
    assert len(expected) >= 5  # the planted copies are there to be found
    assert group_duplicates(emb, threshold) == expected


@pytest.mark.parametrize("threshold", [-0.1, 2.5, "0.1"])
def test_threshold_errors(threshold):
    with pytest.raises(ValueError, match="Argument `threshold` must be a cosine distance in \\[0, 2\\]"):
        group_duplicates(torch.eye(2), threshold)


def test_find_near_flags_rows_close_to_the_reference():
    train = unit_angles(0.0, 1.0, 2.0, 0.98)
    protected = unit_angles(2.01, 1.0)
    rows, ref, d = find_near(train, protected, 0.001)
    assert rows.tolist() == [1, 2, 3] and ref.tolist() == [1, 0, 1]
    np.testing.assert_allclose(d.numpy(), [0.0, 1 - math.cos(0.01), 1 - math.cos(0.02)], atol=1e-6)


def test_knn_vote_rules():
    assert knn_vote(["a", "b", "b"], [0.1, 0.2, 0.3]) == ("b", pytest.approx(2 / 3))
    # distance weights 1/(d+1e-6): a gets 1/0.01 = 100, b gets 1/0.2 + 1/0.3 = 8.33
    label, score = knn_vote(["a", "b", "b"], [0.01, 0.2, 0.3], vote="distance")
    assert label == "a" and score == pytest.approx(100 / (100 + 5 + 10 / 3), rel=1e-4)
    assert knn_vote(["b", "a", "a", "b"], [0.1, 0.2, 0.3, 0.4]) == ("b", 0.5)  # tie: the nearer label


def test_knn_vote_errors():
    with pytest.raises(ValueError, match=r"Argument `vote` must be one of \('majority', 'distance'\), but got 'max'"):
        knn_vote(["a"], [0.1], vote="max")
    with pytest.raises(ValueError, match="at least one neighbour"):
        knn_vote([], [])


def test_knn_classify_hand_worked():
    ref = unit_angles(0.0, 0.2, 0.4, 2.0, 2.1)
    labels = ["cat", "cat", "cat", "dog", "dog"]
    preds = knn_classify(ref, labels, unit_angles(0.1, 2.05, 1.3), k=3)
    assert [p.label for p in preds] == ["cat", "dog", "dog"]
    assert preds[0].neighbours[:2] in ([0, 1], [1, 0]) and preds[0].score == 1.0
    assert preds[1].score == pytest.approx(2 / 3)
    # angle 1.3: neighbours 2.0 (0.7), 2.1 (0.8), 0.4 (0.9): two dogs, one cat
    assert preds[2].neighbours == [3, 4, 2]
    with pytest.raises(ValueError, match=r"Argument `labels` must give one label per reference row \(5\), but got 2"):
        knn_classify(ref, ["a", "b"], unit_angles(0.0))


# -- robustness of retrieval decisions (rpmetric.stores.robust) ------------------------------
def test_nearest_class_logits_hand_worked_and_differentiable():
    from rpmetric.stores.robust import NearestClassLogits

    reference = torch.eye(3)
    logits = NearestClassLogits(torch.nn.Flatten(), reference, torch.tensor([0, 1, 1]), 2)
    x = torch.tensor([[3.0, 0.0, 4.0]]).view(1, 3, 1, 1).requires_grad_()
    out = logits(x)
    # unit query (0.6, 0, 0.8): class 0 holds e0 (cos 0.6), class 1 holds e1 and e2 (max cos 0.8)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8]]))
    out[0, 1].backward()
    assert x.grad.abs().sum() > 0


def test_retrieval_attack_eps_zero_changes_nothing_and_eps_four_hurts(tiny_metric):
    from rpmetric.attacks import AttackConfig
    from rpmetric.stores.robust import evaluate_retrieval_attack

    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=g)
    with torch.no_grad():
        reference = tiny_metric.embed(images)
    truth = list(range(6))  # duplicate task: each query's duplicate is its own stored row
    clean = evaluate_retrieval_attack(tiny_metric, reference, images, truth, task="duplicate")
    assert clean.clean_accuracy == 1.0 and clean.robust_accuracy is None
    none = evaluate_retrieval_attack(tiny_metric, reference, images, truth, task="duplicate",
                                     config=AttackConfig.create("linf", 0.0, steps=3))
    assert none.robust_accuracy == 1.0
    attacked = evaluate_retrieval_attack(tiny_metric, reference, images, truth, task="duplicate", batch_size=4,
                                         config=AttackConfig.create("linf", 8 / 255, steps=10))
    assert attacked.robust_accuracy < 1.0
    assert [r["attacked"] for r in attacked.records] != truth


def test_retrieval_attack_knn_labels(tiny_metric):
    from rpmetric.stores.robust import evaluate_retrieval_attack

    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        reference = tiny_metric.embed(images)
    labels = ["a", "b", "a", "b"]
    # Queries are the reference images themselves: with k=1 the vote is the image's own label.
    result = evaluate_retrieval_attack(tiny_metric, reference, images, ["a", "b", "b", "b"], labels=labels, k=1)
    assert result.clean_accuracy == 0.75 and [r["clean"] for r in result.records] == labels
    from rpmetric.attacks import AttackConfig

    # k=3 over 2+2 references: the surrogate averages each class's top members; eps 0 can change nothing.
    none = evaluate_retrieval_attack(tiny_metric, reference, images, labels, labels=labels, k=3,
                                     config=AttackConfig.create("linf", 0.0, steps=2))
    clean3 = evaluate_retrieval_attack(tiny_metric, reference, images, labels, labels=labels, k=3)
    assert none.robust_accuracy == clean3.clean_accuracy
    strong = evaluate_retrieval_attack(tiny_metric, reference, images, labels, labels=labels, k=1,
                                       config=AttackConfig.create("linf", 16 / 255, steps=10))
    assert strong.clean_accuracy == 1.0 and strong.robust_accuracy < 1.0


def test_retrieval_attack_n_samples_and_uint8_queries(tiny_metric):
    from rpmetric.attacks import AttackConfig
    from rpmetric.stores.robust import evaluate_retrieval_attack

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = tiny_metric.embed(images.float() / 255)
    truth = [0, 1, 2, 4, 3]  # queries 3 and 4 name each other's row: wrong, whatever the attack does
    result = evaluate_retrieval_attack(tiny_metric, reference, images, truth, task="duplicate", batch_size=2,
                                       config=AttackConfig.create("linf", 0.0, steps=1), n_samples=3)
    assert [r["clean"] for r in result.records] == [0, 1, 2, 3, 4]  # uint8 queries find their own rows
    assert result.n == 5 and result.clean_accuracy == 3 / 5
    # The first 3 (across a batch boundary) are attacked; eps 0 leaves them right.
    assert result.n_attacked == 3 and result.robust_accuracy == 1.0
    assert [r.get("attacked") for r in result.records] == [0, 1, 2, None, None]
    with pytest.raises(ValueError, match="Argument `n_samples` must be at least 1, but got 0"):
        evaluate_retrieval_attack(tiny_metric, reference, images, truth, task="duplicate", n_samples=0,
                                  config=AttackConfig.create("linf", 0.0, steps=1))
    with pytest.raises(ValueError, match="Argument `n_samples` limits the attack; pass `config` too"):
        evaluate_retrieval_attack(tiny_metric, reference, images, truth, task="duplicate", n_samples=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "rank"}, r"Argument `task` must be one of \('knn', 'duplicate'\), but got 'rank'"),
    ({"truth": ["a"]}, r"Argument `truth` must give one entry per query image \(2\), but got 1"),
    ({"labels": None}, "task 'knn' needs `labels`"),
    ({"truth": ["a", "zebra"]}, r"True labels \['zebra'\] do not occur in the reference labels"),
])
def test_retrieval_attack_errors(tiny_metric, kwargs, message):
    from rpmetric.stores.robust import evaluate_retrieval_attack

    args = {"truth": ["a", "b"], "labels": ["a", "b"], **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval_attack(tiny_metric, torch.eye(2, 24), torch.rand(2, 3, 32, 32), **args)
