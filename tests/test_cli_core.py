import json

import pytest
import torch
from PIL import Image

import rpmetric
from rpmetric.cli import build_parser, main
from rpmetric.errors import MissingDependencyError


def _save(path, seed, size=(40, 30)):
    gen = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


def _commands():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: rpmetric" in capsys.readouterr().out


def test_models_table_lists_zoo_with_published_numbers(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in rpmetric.list_models():
        assert name in out
    row = next(line for line in out.splitlines() if line.startswith("r-clip-t-convnext"))
    assert "92.3" in row and "81.9" in row and "78.5" in row
    assert "r-clip-f-convnext (default)" in out


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    specs = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in specs] == rpmetric.list_models()
    assert specs[0]["family"] == "open_clip"


def test_distance_of_two_images(tmp_path, vit_folder, tiny_metric, capsys):
    a, b = _save(tmp_path / "a.png", 0), _save(tmp_path / "b.png", 1, size=(50, 50))
    assert main(["distance", str(a), str(b), "--model", str(vit_folder), "--device", "cpu"]) == 0
    expected = tiny_metric(rpmetric.load_image(a), rpmetric.load_image(b)).item()
    assert float(capsys.readouterr().out) == pytest.approx(expected, abs=1e-6)


def test_distance_of_pairs_csv(tmp_path, vit_folder, tiny_metric):
    paths = [_save(tmp_path / f"{i}.png", i, size=(30 + 10 * i, 40)) for i in range(3)]
    (tmp_path / "pairs.csv").write_text("a,b\n0.png,1.png\n1.png,2.png\n2.png,2.png\n")
    out = tmp_path / "out.csv"
    assert main(["distance", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out), "--model", str(vit_folder),
                 "--device", "cpu", "--batch-size", "2"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "a,b,distance" and len(lines) == 4
    got = [float(line.split(",")[2]) for line in lines[1:]]
    imgs = [rpmetric.load_image(p) for p in paths]
    expected = [tiny_metric(imgs[0], imgs[1]).item(), tiny_metric(imgs[1], imgs[2]).item(), 0.0]
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("argv,match", [
    (["distance", "only-one.png"], "give two images A B, or --pairs"),
    (["distance", "--pairs", "missing.csv"], "CSV file not found: missing.csv"),
])
def test_distance_usage_errors(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_distance_batch_size_is_checked_while_parsing(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["distance", "a.png", "b.png", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "argument --batch-size: must be at least 1, but got 0" in capsys.readouterr().err


def test_pairs_csv_without_header(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("x.png,y.png\n")
    assert main(["distance", "--pairs", str(tmp_path / "p.csv")]) == 2
    assert "must have a header with columns a,b" in capsys.readouterr().err


def test_distance_missing_image(tmp_path, vit_folder, capsys):
    assert main(["distance", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(vit_folder), "--device", "cpu"]) == 2
    assert "Image file not found" in capsys.readouterr().err


def test_download_local_folder(vit_folder, capsys):
    assert main(["download", str(vit_folder)]) == 0
    assert capsys.readouterr().out.strip() == f"{vit_folder}: {vit_folder / 'open_clip_model.safetensors'}"


@pytest.mark.parametrize("error", [FileExistsError("run.jsonl already exists; pass --resume"),
                                   MissingDependencyError("pip install x")])
def test_expected_errors_are_one_line_not_tracebacks(monkeypatch, capsys, error):
    from rpmetric import cli

    def fail(args):
        raise error

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["models"].set_defaults(func=fail)
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err == f"rpmetric models: error: {error}\n"
