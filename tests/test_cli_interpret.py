"""`rpmetric invert` and `rpmetric explain` end to end on the tiny models, and their bad input:
one line (argparse's usage line aside), exit status 2, no traceback, nothing written."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import rpmetric
from rpmetric.cli import main
from rpmetric.images import load_image

ABSENT_MODEL = "hf-hub:nobody/absent-model"  # a model that cannot load: naming it means it was loaded first


def _save(path, seed, size=(32, 32)):
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    image = F.interpolate(coarse, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("interpret")
    paths = {"x": _save(root / "x.png", 0), "y": _save(root / "y.png", 1), "wide": _save(root / "wide.png", 2, (48, 32)),
             "big": _save(root / "big.png", 3, (40, 40))}
    b = np.array(Image.open(paths["x"]))
    b[8:20, 16:28] = 0  # B: x with a black square
    Image.fromarray(b).save(root / "b.png")
    paths["b"] = root / "b.png"
    return paths


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_invert_writes_the_grid_and_each_inversion(images, vit_folder, convnext_folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, stdout, _ = _run(capsys, ["invert", images["x"], images["y"], "--model", vit_folder, "--model", convnext_folder,
                                    "--out", out, "--steps", "10", "--device", "cpu", "--quiet"])
    assert code == 0
    assert Image.open(out).format == "PNG"
    rows = [line.split() for line in stdout.splitlines()[2:-1]]
    metrics = {str(m): rpmetric.RobustDistance(str(m), device="cpu") for m in (vit_folder, convnext_folder)}
    assert len(rows) == 4 and stdout.splitlines()[-1] == f"wrote {out}"
    for image, model, printed, saved in rows:
        assert re.fullmatch(rf"grid-{_stem(image)}-{_stem(model)}\.png", saved.split("/")[-1])
        inversion = load_image(saved)
        assert inversion.shape == (1, 3, 32, 32)
        # the printed cosine, against the saved 8-bit file embedded again (rounding moves it a little)
        metric = metrics[model]
        expected = F.cosine_similarity(metric.embed(inversion), metric.embed(load_image(image)))
        assert float(printed) == pytest.approx(float(expected), abs=5e-3)


def _stem(path: str) -> str:
    return path.rstrip("/").split("/")[-1].rsplit(".", 1)[0] if path.endswith(".png") else path.rstrip("/").split("/")[-1]


def test_invert_with_size_and_an_init_image(images, vit_folder, tmp_path, capsys):
    out = tmp_path / "grid.pdf"
    code, stdout, _ = _run(capsys, ["invert", images["x"], images["wide"], "--size", "24", "--init", f"image:{images['big']}",
                                    "--model", vit_folder, "--out", out, "--steps", "2", "--device", "cpu", "--quiet"])
    assert code == 0 and out.read_bytes().startswith(b"%PDF")
    assert load_image(tmp_path / "grid-wide-tiny-vit.png").shape == (1, 3, 24, 24)


def test_explain_writes_the_figure_and_prints_the_distance(images, vit_folder, tiny_metric, tmp_path, capsys):
    out = tmp_path / "map.png"
    code, stdout, _ = _run(capsys, ["explain", images["x"], images["b"], "--model", vit_folder, "--out", out,
                                    "--method", "both", "--patch", "8", "--stride", "4", "--samples", "2",
                                    "--device", "cpu", "--quiet"])
    assert code == 0 and Image.open(out).format == "PNG"
    printed = float(stdout.splitlines()[0].split("=")[1])
    expected = float(tiny_metric(load_image(images["x"]), load_image(images["b"])))
    assert printed == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("flags, weighted", [([], True), (["--times-difference"], True), (["--sensitivity"], False)])
def test_explain_gradient_weights_by_the_difference_unless_sensitivity(images, vit_folder, tiny_metric, tmp_path,
                                                                       capsys, monkeypatch, flags, weighted):
    import rpmetric.interpret as interpret
    import rpmetric.report.interpret as figures

    drawn, draw = [], figures.distance_map_figure
    monkeypatch.setattr(figures, "distance_map_figure", lambda a, b, panels, **kw: drawn.append(panels) or draw(
        a, b, panels, **kw))
    code, _, _ = _run(capsys, ["explain", images["x"], images["b"], "--model", vit_folder, "--out", tmp_path / "m.png",
                               "--method", "gradient", "--samples", "1", "--noise", "0", "--smooth", "0", "--device",
                               "cpu", "--quiet", *flags])
    assert code == 0
    [(title, values, unit)] = drawn[0]
    expected = interpret.distance_map(tiny_metric, load_image(images["x"]), load_image(images["b"]), "gradient",
                                      samples=1, noise=0.0, smooth=0.0, times_difference=weighted, progress=False)[0]
    assert torch.allclose(values, expected, rtol=1e-5, atol=1e-9)
    assert ("|B − A|" in title) == weighted and ("distance per unit pixel" in unit) == (not weighted)
    away = np.ones(values.shape, bool)
    away[8:20, 16:28] = False  # outside b.png's black square, where the images agree
    assert (float(values[away].abs().max()) == 0.0) == weighted


def test_explain_brings_different_sizes_to_size(images, vit_folder, tmp_path, capsys):
    code, _, _ = _run(capsys, ["explain", images["x"], images["wide"], "--size", "32", "--model", vit_folder,
                               "--out", tmp_path / "map.svg", "--patch", "16", "--device", "cpu", "--quiet"])
    assert code == 0 and (tmp_path / "map.svg").read_text().lstrip().startswith("<?xml")


def _bad(ws, out):
    return [
        (["invert", ws["x"], ws["wide"], "--out", out], "wide.png is 48 x 32 pixels but", "--size 32"),
        (["invert", ws["x"], "--init", f"image:{ws['big']}", "--out", out], "big.png is 40 x 40 pixels", "--size 32"),
        (["invert", ws["x"], "--init", "image:" + str(ws["x"].parent / "nope.png"), "--out", out], "nope.png", "not found"),
        (["invert", ws["x"], ws["x"].parent / "gone.png", "--out", out], "gone.png", "not found"),
        (["invert", ws["x"], "--out", out.with_suffix(".jpg")], "--out must end in one of .png, .svg, .pdf", ".jpg"),
        (["explain", ws["x"], ws["wide"], "--out", out], "wide.png is 48 x 32 pixels but", "--size 32"),
        (["explain", ws["x"], ws["y"], "--patch", "33", "--out", out], "--patch 33 is larger than the images", "--patch 32"),
        (["explain", ws["x"], ws["y"], "--size", "16", "--out", out], "--patch 32 is larger than the images", "--size"),
        (["explain", ws["x"], ws["y"], "--noise", "1.5", "--out", out], "--noise must be at most 1", "1.5"),
        (["explain", ws["x"], ws["x"].parent / "gone.png", "--out", out], "gone.png", "not found"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_input_is_one_line_before_the_model(images, tmp_path, case, capsys):
    argv, first, second = _bad(images, tmp_path / "out.png")[case]
    code, _, err = _run(capsys, argv + ["--model", ABSENT_MODEL, "--device", "cpu"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert first in err and second in err and "nobody" not in err, err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv, named", [
    (["invert", "x.png", "--init", "zeros", "--out", "g.png"], "argument --init: must be noise, gray or image:PATH"),
    (["invert", "x.png", "--init", "image:", "--out", "g.png"], "argument --init: must be noise, gray or image:PATH"),
    (["invert", "x.png", "--steps", "0", "--out", "g.png"], "argument --steps: must be at least 1"),
    (["invert", "x.png", "--lr", "nan", "--out", "g.png"], "argument --lr: must be a finite number"),
    (["explain", "a.png", "b.png", "--method", "lime", "--out", "m.png"], "argument --method: invalid choice"),
    (["explain", "a.png", "--out", "m.png"], "the following arguments are required: IMAGE"),
    (["explain", "a.png", "b.png", "--sensitivity", "--times-difference", "--out", "m.png"],
     "argument --times-difference: not allowed with argument --sensitivity"),
])
def test_bad_options_are_refused_by_the_parser(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and named in err.splitlines()[-1] and "Traceback" not in err, err
