"""SRCC, KRCC and PLCC against hand-worked values, and the 4-parameter logistic fit."""

import math

import numpy as np
import pytest

from rpmetric.scoring import correlations, fit_logistic4, krcc, logistic4, logistic_plcc, plcc, srcc


def test_srcc_and_krcc_with_ties_on_both_sides_by_hand():
    x, y = [1, 2, 2, 3], [1, 3, 2, 2]
    # Average ranks: x -> [1, 2.5, 2.5, 4], y -> [1, 4, 2.5, 2.5]; deviations from the mean 2.5:
    # x [-1.5, 0, 0, 1.5], y [-1.5, 1.5, 0, 0]: sum of products 2.25, sums of squares 4.5 each.
    assert srcc(x, y) == pytest.approx(2.25 / 4.5)
    # Pairs (i<j): (1,2) C, (1,3) C, (1,4) C, (2,3) tied in x, (2,4) D, (3,4) tied in y.
    # tau-b = (C - D) / sqrt((n0 - tx)(n0 - ty)) = (3 - 1) / sqrt((6 - 1)(6 - 1)).
    assert krcc(x, y) == pytest.approx(2 / math.sqrt(25))


def test_krcc_is_tau_b_not_tau_a():
    x, y = [1, 1, 2, 3], [1, 2, 3, 4]
    # C: (1,3) (1,4) (2,3) (2,4) (3,4) = 5, D = 0, one tie in x: tau-b 5/sqrt(5*6), tau-a would be 5/6.
    assert krcc(x, y) == pytest.approx(5 / math.sqrt(30))


def test_correlations_are_oriented_by_the_score_direction():
    d = [0.1, 0.2, 0.3, 0.4, 0.5]
    mos = [5.0, 4.0, 4.0, 1.0, 2.0]  # higher is better
    good = correlations(d, mos, higher_is_better=True)
    # -d ranks [5,4,3,2,1], mos ranks [5,3.5,3.5,1,2]: deviations [2,1,0,-1,-2] and [2,.5,.5,-2,-1].
    assert good["srcc"] == pytest.approx(8.5 / math.sqrt(10 * 9.5))
    # C = 8, D = 1 (the last pair), one tie in mos: (8 - 1) / sqrt(10 * 9).
    assert good["krcc"] == pytest.approx(7 / math.sqrt(90))
    dmos = [-m for m in mos]  # the same judgements as a lower-is-better score
    flipped = correlations(d, dmos, higher_is_better=False)
    assert flipped["srcc"] == pytest.approx(good["srcc"]) and flipped["krcc"] == pytest.approx(good["krcc"])
    assert correlations(d, mos, higher_is_better=False)["srcc"] == pytest.approx(-good["srcc"])
    np.testing.assert_allclose(good["plcc_raw"], np.corrcoef(-np.array(d), mos)[0, 1])


def test_logistic_fit_recovers_the_parameters_and_gives_plcc_one():
    x = np.linspace(-2.0, 3.0, 40)
    beta = (8.0, 1.5, 0.4, 0.6)
    y = logistic4(x, *beta)
    np.testing.assert_allclose(fit_logistic4(x, y), beta, rtol=1e-4, atol=1e-4)
    assert logistic_plcc(x, y) == pytest.approx(1.0, abs=1e-9)
    assert plcc(x, y) < 0.99  # the curve is far from a line: the raw PLCC is lower
    # The closed form at the midpoint: halfway between beta2 and beta1.
    assert float(logistic4(0.4, *beta)) == pytest.approx((8.0 + 1.5) / 2)


def test_a_falling_logistic_gives_a_negative_plcc():
    x = np.linspace(-2.0, 2.0, 30)
    y = logistic4(-x, 5.0, 1.0, 0.0, 0.5)  # falls with x
    assert logistic_plcc(x, y) == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("d, score", [([0.1], [1.0]), ([0.1, 0.1, 0.1], [1.0, 2.0, 3.0])])
def test_undefined_correlations_are_none(d, score):
    figures = correlations(d, score)
    assert figures["srcc"] is None and figures["krcc"] is None and figures["plcc"] is None


def test_non_finite_input_is_refused():
    with pytest.raises(ValueError, match="must be finite"):
        correlations([0.1, float("nan")], [1.0, 2.0])
