"""Figures of results (rpmetric.report.figures) and ``rpmetric plot``: the data each figure draws,
read back from its artists, against the JSON it was given; and the command's errors."""

from __future__ import annotations

import json
import math
import sys

import pytest

pytest.importorskip("matplotlib")

import rpmetric.report  # noqa: E402
from rpmetric.cli import main  # noqa: E402


def _eval(nights_root, model, out, *eps):
    assert main(["eval", "nights", str(nights_root), "--model", str(model), "--workers", "0", "--attack", "linf",
                 "--steps", "2", "--eps", *eps, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def result_files(tmp_path_factory, nights_known, vit_folder):
    """Two eval results of the tiny ViT: a curve over three radii, and one radius."""
    folder = tmp_path_factory.mktemp("results")
    return (_eval(nights_known[0], vit_folder, folder / "curve.json", "8", "0", "2"),
            _eval(nights_known[0], vit_folder, folder / "single.json", "4"))


def _panel(figure, label):
    (ax,) = [ax for ax in figure.axes if ax.get_label() == label]
    return ax


def _bars(ax):
    """{series label: [bar heights]} as drawn."""
    return {c.get_label(): [bar.get_height() for bar in c.patches] for c in ax.containers}


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_comparison_figure_draws_the_json(result_files):
    curve, single = (json.loads(path.read_text()) for path in result_files)
    figure = rpmetric.report.comparison_figure(result_files)
    groups = ["test_imagenet", "test_no_imagenet", "total"]
    names = ["tiny-vit (curve)", "tiny-vit (single)"]  # one model: told apart by the file names
    assert _bars(_panel(figure, "score")) == {
        name: [100 * r["results"][g]["score"] for g in groups] for name, r in zip(names, (curve, single))}
    assert _bars(_panel(figure, "clean")) == {
        name: [100 * r["attack"][g]["clean_accuracy"] for g in groups] for name, r in zip(names, (curve, single))}
    robust = _bars(_panel(figure, "robust"))
    assert list(robust) == ["tiny-vit (curve) @0", "tiny-vit (curve) @2/255", "tiny-vit (curve) @8/255",
                            "tiny-vit (single) @4/255"]
    for k, name in enumerate(list(robust)[:3]):
        assert robust[name] == [100 * curve["attack"][g]["per_eps"][k]["robust_accuracy"] for g in groups]
    assert robust["tiny-vit (single) @4/255"] == [100 * single["attack"][g]["robust_accuracy"] for g in groups]
    for group in groups:
        lines = _lines(_panel(figure, f"curve:{group}"))
        points = curve["attack"][group]["per_eps"]
        # radii in 1/255 units; the curve's own eps = 0 point is the clean accuracy
        assert lines["tiny-vit (curve)"][0] == pytest.approx([0, 2, 8])
        assert lines["tiny-vit (curve)"][1] == [100 * p["robust_accuracy"] for p in points]
        assert lines["tiny-vit (curve)"][1][0] == pytest.approx(100 * curve["attack"][group]["clean_accuracy"])
        # one radius: from the clean accuracy at eps = 0 to the robust accuracy at 4/255
        attack = single["attack"][group]
        assert lines["tiny-vit (single)"][0] == pytest.approx([0, 4])
        assert lines["tiny-vit (single)"][1] == [100 * attack["clean_accuracy"], 100 * attack["robust_accuracy"]]


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_plot_writes_the_format_of_the_suffix(result_files, tmp_path, capsys, suffix, magic):
    out = tmp_path / f"figure{suffix}"
    assert main(["plot", *map(str, result_files), "--out", str(out), "--labels", "A", "B"]) == 0
    assert out.read_bytes().startswith(magic)
    assert capsys.readouterr().out.strip() == f"wrote {out}"


def _result(task="2afc", groups=("cnn", "traditional"), attack=None):
    scores = {"cnn": 0.75, "traditional": 0.5}
    result = {"model": "m", "task": task, "score": "2AFC score" if task == "2afc" else "JND mean average precision",
              "results": {g: {"n": 4, "score": scores[g]} for g in groups}}
    if attack is not None:
        result["attack"] = attack
    return result


DEFENDED = {"n": 4, "clean_accuracy": 0.75, "attack": {"norm": "l2", "eps": [0.5, 1.0]},
            "per_eps": [{"eps": 0.5, "robust_accuracy": 0.5,
                         "counterattack": {"nonadaptive_accuracy": 0.75, "adaptive_accuracy": 0.5,
                                           "worst_case_accuracy": 0.25}},
                        {"eps": 1.0, "robust_accuracy": 0.25,
                         "counterattack": {"nonadaptive_accuracy": 0.5, "adaptive_accuracy": 0.25,
                                           "worst_case_accuracy": 0.0}}],
            "counterattack": {"config": "Counterattack(...)", "clean_accuracy": 1.0}}


def test_robustness_curve_of_a_defended_result_hand_worked():
    figure = rpmetric.report.robustness_curve([_result(attack={"cnn": DEFENDED})], labels=["R"])
    (ax,) = figure.axes
    assert ax.get_label() == "curve:cnn" and ax.get_xlabel() == "eps (l2)"
    lines = _lines(ax)
    assert lines["R"] == ([0.0, 0.5, 1.0], [75.0, 50.0, 25.0])  # starts at the clean accuracy
    # dashed: the worst case of the two attacks on the defence, from its own clean accuracy
    assert lines["R + counterattack"] == ([0.0, 0.5, 1.0], [100.0, 25.0, 0.0])
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--"]


def test_score_bars_of_jnd_results_and_no_curve():
    results = [_result("jnd"), _result("jnd", groups=("cnn",))]
    figure = rpmetric.report.score_bars(results, labels=["A", "B"])
    (ax,) = figure.axes
    assert ax.get_title() == "JND mean average precision (%)"
    bars = _bars(ax)
    assert bars["A"] == [75.0, 50.0]
    assert bars["B"][0] == 75.0 and math.isnan(bars["B"][1])  # B has no `traditional`: no bar
    with pytest.raises(ValueError, match=r"None of the results has an attack \(results\[0\], results\[1\]\)"):
        rpmetric.report.robustness_curve(results)


@pytest.mark.parametrize("kwargs, match", [
    ({"results": []}, r"`results` holds no result"),
    ({"results": [_result()], "labels": ["a", "b"]}, r"one label per result \(1\), but got 2"),
    ({"results": [_result(attack={"cnn": DEFENDED})], "groups": ["traditional"]},
     r"`groups` must be among the attacked ones \['cnn'\], but got 'traditional'"),
])
def test_builder_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rpmetric.report.robustness_curve(**kwargs)


# -- rpmetric plot: bad input ------------------------------------------------------------------
def _curve(norm):
    return {"n": 4, "clean_accuracy": 0.5, "attack": {"norm": norm, "eps": [0.0, 0.1]},
            "per_eps": [{"eps": 0.0, "robust_accuracy": 0.5}, {"eps": 0.1, "robust_accuracy": 0.25}]}


BAD_FILES = {
    # name: (file content, or None for no file, or "folder"; what the message says)
    "missing.json": (None, r"Cannot read .*missing\.json: No such file or directory"),
    "folder.json": ("folder", r"folder\.json is a folder; give a result file"),
    "text.json": ("not json", r"text\.json is not JSON \(Expecting value: line 1 column 1"),
    "binary.json": (b"\xff\xfe\x00", r"binary\.json is not JSON"),
    "list.json": ([1, 2], r"list\.json is not a result of `rpmetric eval`: it holds a JSON list, not an object"),
    "retrieval.json": ({"store": "S", "queries": "Q.csv", "n": 3}, r"retrieval\.json is not a result .* 'task' is "
                                                                   r"missing"),
    "task.json": ({**_result(), "task": "knn"}, r"task\.json .* its 'task' is 'knn', not one of \('2afc', 'jnd'[^)]*\)"),
    "empty.json": ({**_result(), "results": {}}, r"empty\.json .* no 'results' of any split or category"),
    "noscore.json": ({**_result(), "results": {"cnn": {"n": 4}}}, r"noscore\.json .* results\['cnn'\] has no 'score'"),
    "nanscore.json": ({**_result(), "results": {"cnn": {"n": 4, "score": "NaN"}}},
                      r"nanscore\.json .* results\['cnn'\]\['score'\] is 'NaN', not a finite number >= 0"),
    "accuracy.json": (_result(attack={"cnn": {**_curve("linf"), "clean_accuracy": 1.5}}),
                      r"accuracy\.json .* attack\['cnn'\]\['clean_accuracy'\] is 1\.5, not an accuracy in \[0, 1\]"),
    "norm.json": (_result(attack={"cnn": {**_curve("linf"), "attack": {"norm": "l1"}}}),
                  r"norm\.json .* attack\['cnn'\] has no 'attack' with a 'norm' of 'linf' or 'l2'"),
    "order.json": (_result(attack={"cnn": {**_curve("linf"), "per_eps": _curve("linf")["per_eps"][::-1]}}),
                   r"order\.json .* attack\['cnn'\]\['per_eps'\] radii \[0\.1, 0\.0\] are not increasing"),
    "norobust.json": (_result(attack={"cnn": {"n": 4, "clean_accuracy": 0.5, "attack": {"norm": "l2", "eps": 1}}}),
                      r"norobust\.json .* attack\['cnn'\] has no 'robust_accuracy'"),
}


def _write(tmp_path, name):
    content, _ = BAD_FILES[name]
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))
    return path


def _plot(capsys, *argv):
    code = main(["plot", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("\n") == 1, err  # one line
    assert err.startswith("rpmetric plot: error: ")
    return code, err


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_plot_bad_result_files(tmp_path, capsys, name):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_result()))
    code, err = _plot(capsys, good, _write(tmp_path, name), "--out", tmp_path / "fig.png")
    assert code == 2
    assert str(tmp_path / name) in err  # names the file
    assert __import__("re").search(BAD_FILES[name][1], err), err
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.parametrize("files, extra, match", [
    ([_result(), _result("jnd")], [], r"b\.json is a jnd result but .*a\.json is a 2afc one; plot results of one task"),
    ([_result(attack={"cnn": _curve("linf")}), _result(attack={"cnn": _curve("l2")})], [],
     r"b\.json attacks in l2 but .*a\.json in linf; .* plot results of one norm together"),
    ([_result(), _result()], ["--labels", "A"], r"--labels gives 1 label\(s\) for 2 result file\(s\)"),
    ([_result()], ["--out", "FIG.jpg"], r"--out must end in one of \.png, \.svg, \.pdf, but got '.*FIG\.jpg'"),
])
def test_plot_errors(tmp_path, capsys, files, extra, match):
    paths = []
    for name, content in zip("ab", files):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(content))
    extra = [str(tmp_path / e) if e.endswith(".jpg") else e for e in extra]
    out = [] if "--out" in extra else ["--out", tmp_path / "fig.png"]
    code, err = _plot(capsys, *paths, *out, *extra)
    assert code == 2 and __import__("re").search(match, err), err


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_result()))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, err = _plot(capsys, good, "--out", tmp_path / "fig.png")
    assert code == 2 and 'pip install "rpmetric[plot]"' in err
