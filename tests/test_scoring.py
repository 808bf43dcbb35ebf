"""2AFC score, binary accuracy and JND mAP against hand-worked answers and an independent VOC loop."""

import numpy as np
import pytest
import torch

import datagen
from rpmetric.scoring import binary_accuracy, binary_agreements, jnd_map, twoafc_score, twoafc_scores


def test_twoafc_scores_follow_the_formula_case_by_case():
    # d0 < d1 -> 1 - p;  d1 < d0 -> p;  tie -> 0.5 whatever p is.
    d0 = [0.1, 0.9, 0.4, 0.4, 0.2]
    d1 = [0.5, 0.3, 0.4, 0.4, 0.7]
    p = [0.2, 0.8, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(twoafc_scores(d0, d1, p), [0.8, 0.8, 0.5, 0.5, 0.0])
    assert twoafc_score(d0, d1, p) == pytest.approx(2.6 / 5)


def test_twoafc_accepts_tensors_of_any_shape():
    d0 = torch.tensor([[0.1], [0.9]])
    d1 = torch.tensor([0.5, 0.3]).view(2, 1, 1, 1)
    assert twoafc_score(d0, d1, np.array([0.0, 1.0])) == 1.0


def test_binary_accuracy_uses_p_above_half_and_counts_ties_half():
    # labels: right, left (p == 0.5 is not "right"), left, right; predictions: right, right, tie, left
    d0 = [0.5, 0.5, 0.3, 0.1]
    d1 = [0.1, 0.1, 0.3, 0.5]
    p = [0.6, 0.5, 0.0, 1.0]
    assert binary_accuracy(d0, d1, p) == pytest.approx((1 + 0 + 0.5 + 0) / 4)


def test_binary_agreements_per_triplet_hand_worked():
    # right chosen by the metric and by people (p=0.9) -> 1; metric left, people right -> 0;
    # metric left, people left (p=0.2) -> 1; a tie -> 0.5 even with p=1; metric right, p=0.5 (left) -> 0.
    d0 = torch.tensor([0.7, 0.1, 0.2, 0.4, 0.6])
    d1 = torch.tensor([0.3, 0.8, 0.9, 0.4, 0.2])
    p = torch.tensor([0.9, 1.0, 0.2, 1.0, 0.5], dtype=torch.float64)
    np.testing.assert_array_equal(binary_agreements(d0, d1, p), [1.0, 0.0, 1.0, 0.5, 0.0])
    assert binary_accuracy(d0, d1, p) == pytest.approx(2.5 / 5)
    with pytest.raises(ValueError, match="same number of elements"):
        binary_agreements([0.1, 0.2], [0.2], [0.5])


def test_jnd_map_hand_worked_example():
    entries, expected = datagen.JND_KNOWN
    amplitudes = [a for a, _ in entries]  # distances ordered like the amplitudes
    same = [s for _, s in entries]
    assert jnd_map(amplitudes, same) == pytest.approx(expected)


@pytest.mark.parametrize("d, same, expected", [
    ([0.1, 0.2, 0.3], [1, 1, 0], 1.0),  # perfect ranking
    ([0.1, 0.2], [0, 1], 0.5),  # worst: precision 1/2 at full recall
    ([0.1, 0.2, 0.3], [1, 0, 1], 0.5 * 1 + 0.5 * (2 / 3)),
])
def test_jnd_map_small_cases(d, same, expected):
    assert jnd_map(d, same) == pytest.approx(expected)


def test_jnd_map_flattens_batched_distances():
    # lpips' script sorted an (N,1,1,1) array along its last axis, i.e. did not sort at all.
    d = np.array([0.3, 0.1, 0.2]).reshape(3, 1, 1, 1)
    same = [0.0, 1.0, 1.0]
    assert jnd_map(d, same) == 1.0
    assert jnd_map(torch.from_numpy(d), same) == 1.0


def _voc_ap_reference(d, same):
    """An independent VOC loop (padded arrays, explicit envelope sweep)."""
    order = sorted(range(len(d)), key=lambda i: (d[i], i))
    tp = fp = 0.0
    rec, prec = [], []
    for i in order:
        tp += same[i]
        fp += 1 - same[i]
        rec.append(tp / sum(same))
        prec.append(tp / (tp + fp))
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def test_jnd_map_matches_a_voc_loop_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = rng.random(40).tolist()
        same = rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 40).tolist()
        assert jnd_map(d, same) == pytest.approx(_voc_ap_reference(d, same), abs=1e-12)


def test_scoring_errors():
    with pytest.raises(ValueError, match=r"same number of elements.*'d0': 2, 'd1': 1"):
        twoafc_score([0.1, 0.2], [0.3], [0.5, 0.5])
    with pytest.raises(ValueError, match="empty"):
        twoafc_score([], [], [])
    with pytest.raises(ValueError, match="`d` must be finite"):
        jnd_map([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="`same` must not be all zero"):
        jnd_map([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="same number of elements"):
        binary_accuracy([0.1], [0.2], [0.5, 0.5])
