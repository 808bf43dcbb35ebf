"""Near-duplicate search by each method against pairs computed independently in numpy.

The approximate methods (cluster, ivf) only propose candidates and confirm each with the exact
distance: what they report must all be true pairs (precision 1), and they must find nearly all
of them (recall at least the bound evals/bench_scale.py supports with the default knobs).
"""

from __future__ import annotations

import builtins
import re

import numpy as np
import pytest
import torch

from planted import planted_vectors, true_pairs
from rpmetric.errors import MissingDependencyError
from rpmetric.stores.dedup import DEDUP_METHODS, find_near, group_duplicates, near_pairs

pytest.importorskip("faiss")

T = 0.05
ROUNDING = 1e-5  # pairs this close to T may fall either side: neither required nor forbidden
RECALL_BOUND = 0.99


@pytest.fixture(scope="module")
def planted():
    x = planted_vectors(20_000, 64, T, centres=100)
    i, j, d = true_pairs(x, T)
    keys = i * len(x) + j
    sure = set(keys[d <= T - ROUNDING].tolist())
    allowed = set(keys[d <= T + ROUNDING].tolist())
    assert len(sure) > 1000  # the planted groups are there
    return torch.from_numpy(x), sure, allowed


@pytest.mark.parametrize("method", ["exact", "cluster", "ivf", "auto"])
def test_every_method_reports_only_true_pairs_and_finds_nearly_all(planted, method):
    x, sure, allowed = planted
    i, j, d = near_pairs(x, T, method=method)
    found = (i * len(x) + j).tolist()
    assert len(set(found)) == len(found)  # each pair once
    assert bool((i < j).all())
    assert set(found) <= allowed  # precision 1
    recall = len(set(found) & sure) / len(sure)
    assert recall == 1.0 if method == "exact" else recall >= RECALL_BOUND, recall
    # The distances are the exact ones.
    xd = x.double()
    np.testing.assert_allclose(d.numpy(), 1 - (xd[i] * xd[j]).sum(1).numpy(), atol=1e-6)


@pytest.mark.parametrize("method", ["cluster", "ivf"])
def test_more_probes_never_lose_pairs_and_one_cell_is_exact(planted, method):
    x, sure, _ = planted
    few = near_pairs(x, T, method=method, probes=1)
    many = near_pairs(x, T, method=method, probes=4)
    key = lambda r: set((r[0] * len(x) + r[1]).tolist())  # noqa: E731
    assert key(few) <= key(many)
    # With a single cell every vector meets every other: the exact answer.
    one = near_pairs(x[:4000], T, method=method, clusters=1)
    exact = near_pairs(x[:4000], T, method="exact")
    assert key(one) == key(exact)


def test_groups_and_find_near_agree_with_the_exact_method(planted):
    x, _, _ = planted
    part = x[:6000]
    assert group_duplicates(part, T, method="cluster", probes=8) == group_duplicates(part, T, method="exact")
    rows, ref, d = find_near(x[:5000], x[5000:], T, method="cluster")
    truth_rows, truth_ref, truth_d = find_near(x[:5000], x[5000:], T, method="exact")
    assert len(truth_rows) > 50
    assert set(rows.tolist()) <= set(truth_rows.tolist())
    assert len(rows) >= RECALL_BOUND * len(truth_rows)
    # For each flagged row, the match is its nearest reference row (up to rounding among equals).
    nearest = dict(zip(truth_rows.tolist(), truth_d.tolist()))
    assert all(abs(nearest[r] - dist) < 1e-6 for r, dist in zip(rows.tolist(), d.tolist()))
    assert torch.equal(rows, rows.sort().values)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"method": "fast"}, ValueError, "Argument `method` must be one of \\('auto', 'exact', 'ivf', 'cluster'\\), but got 'fast'"),
    ({"method": "cluster", "probes": 0}, ValueError, "Argument `probes` must be at least 1, but got 0"),
    ({"method": "ivf", "clusters": 0}, ValueError, "Argument `clusters` must be at least 1, but got 0"),
    ({"method": "cluster", "clusters": 2.5}, TypeError, "Argument `clusters` must be an integer"),
])
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        near_pairs(torch.eye(3), 0.1, **kwargs)


@pytest.mark.parametrize("method", ["cluster", "ivf"])
def test_approximate_methods_without_faiss_name_the_package(monkeypatch, method):
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: _refuse_faiss(name) or real_import(name, *a, **k))
    with pytest.raises(MissingDependencyError, match="pip install faiss-cpu"):
        near_pairs(torch.eye(3), 0.1, method=method)
    # auto falls back to the exact scan rather than failing.
    assert near_pairs(torch.eye(3), 0.1, method="auto")[0].tolist() == []


def test_methods_are_the_cli_choices():
    assert DEDUP_METHODS == ("auto", "exact", "ivf", "cluster")


# -- the command line --------------------------------------------------------------------------
# The embedded planted images of test_cli_retrieval (a store of 10 images, so one cell: the
# approximate methods must give exactly the exact groups there).
from test_cli_retrieval import images, planted_threshold, store  # noqa: E402,F401  (fixtures)


def run(capsys, *argv):
    from rpmetric.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra", [["--method", "cluster"], ["--method", "ivf", "--clusters", "3", "--nprobe", "3"],
                                   ["--method", "auto"], ["--method", "exact"]])
def test_dedup_methods_give_the_exact_groups_and_csv(capsys, store, planted_threshold, tmp_path, extra):
    code, _, err_exact = run(capsys, "dedup", store, "--threshold", planted_threshold, "--out", tmp_path / "exact.csv",
                             "--method", "exact")
    assert code == 0
    code, _, err = run(capsys, "dedup", store, "--threshold", planted_threshold, "--out", tmp_path / "m.csv", *extra)
    assert code == 0 and err == err_exact and "groups of near-duplicates" in err
    exact_csv = (tmp_path / "exact.csv").read_text()
    assert exact_csv.splitlines()[0] == "group,keep,path,distance_to_first" and len(exact_csv.splitlines()) > 2
    assert (tmp_path / "m.csv").read_text() == exact_csv


@pytest.mark.parametrize("method", ["cluster", "ivf"])
def test_dedup_against_by_method_matches_the_index_search(capsys, store, planted_threshold, method):
    code, by_index, _ = run(capsys, "dedup", store, "--against", store, "--threshold", planted_threshold,
                            "--index", "exact")
    assert code == 0
    code, by_method, _ = run(capsys, "dedup", store, "--against", store, "--threshold", planted_threshold,
                             "--method", method)
    assert code == 0 and len(by_method.splitlines()) > 1
    # Against itself every image is flagged at distance 0 (up to rounding), whichever copy matches.
    assert [r.split(",")[0] for r in by_method.splitlines()] == [r.split(",")[0] for r in by_index.splitlines()]


@pytest.mark.parametrize("extra, message", [
    (["--method", "exact", "--nprobe", "2"], r"--clusters and --nprobe tune --method cluster\|ivf\|auto"),
    (["--method", "exact", "--clusters", "2"], "--clusters and --nprobe tune"),
    (["--against", "{store}", "--index", "ivf", "--method", "cluster"],
     "--index ivf and --method/--clusters both choose how OTHER_STORE is searched"),
    (["--index", "ivf"], "--index chooses how --against OTHER_STORE is searched"),
])
def test_dedup_option_conflicts_exit_2_with_one_line(capsys, store, extra, message):
    code, _, err = run(capsys, "dedup", store, "--threshold", "0.1", *[a.format(store=store) for a in extra])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


@pytest.mark.parametrize("extra, message", [
    (["--method", "fast"], r"argument --method: invalid choice: 'fast' \(choose from .*auto.*exact.*ivf.*cluster"),
    (["--clusters", "0"], "argument --clusters: must be at least 1, but got 0"),
    (["--nprobe", "-1"], "argument --nprobe: must be at least 1, but got -1"),
])
def test_dedup_bad_knobs_are_refused_while_parsing(capsys, store, extra, message):
    from rpmetric.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["dedup", str(store), "--threshold", "0.1", *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.search(message, err.strip().splitlines()[-1]), err
    assert "Traceback" not in err


def test_dedup_without_faiss_is_one_line(capsys, monkeypatch, store):
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: _refuse_faiss(name) or real_import(name, *a, **k))
    code, _, err = run(capsys, "dedup", store, "--threshold", "0.1", "--method", "cluster")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "pip install faiss-cpu" in err


def _refuse_faiss(name):
    if name == "faiss":
        raise ImportError("No module named 'faiss'")
