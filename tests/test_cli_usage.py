"""How the command line treats its users: options anywhere, checks before any model is loaded,
one-line errors and notices in CLI words, Ctrl-C, and how distances print."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from rpmetric.cli import build_parser, main
from subproc import run_cli

# A model that cannot load here (conftest sets HF_HUB_OFFLINE=1): an error naming it means the
# command tried to load the model before checking its other arguments.
ABSENT_MODEL = "hf-hub:nobody/absent-model"


def _save(path, seed, size=(40, 30)):
    gen = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, vit_folder):
    """Images, a labelled store, a query CSV and a NIGHTS folder, shared by the tables below."""
    import datagen

    root = tmp_path_factory.mktemp("usage")
    images = root / "images"
    images.mkdir()
    for i in range(4):
        _save(images / f"img{i}.png", i, size=(36 + 4 * i, 32))
    (root / "labels.csv").write_text("path,label\n" + "".join(f"images/img{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    (root / "queries.csv").write_text("path,label\nimages/img0.png,a\n")
    store = root / "store"
    assert main(["embed", str(images), "--out", str(store), "--model", str(vit_folder), "--device", "cpu",
                 "--workers", "0", "--quiet"]) == 0
    datagen.nights_known(root / "nights")
    return root


# -- 1. options anywhere -------------------------------------------------------------------------
def _parse(argv):
    return vars(build_parser().parse_args([str(a) for a in argv]))


@pytest.mark.parametrize("argv,expected", [
    (["distance", "a.png", "--model", "M", "b.png"], {"images": ["a.png", "b.png"], "model": "M"}),
    (["distance", "a.png", "b.png", "--device", "cpu"], {"images": ["a.png", "b.png"], "device": "cpu"}),
    (["search", "S", "--k", "2", "q1.png", "q2.png"], {"store": "S", "queries": ["q1.png", "q2.png"], "k": 2}),
    (["search", "--k", "2", "S", "q1.png", "--json"], {"store": "S", "queries": ["q1.png"], "json": True}),
    (["classify", "S", "--labels", "L.csv", "q1.png", "q2.png"],
     {"store": "S", "labels": "L.csv", "queries": ["q1.png", "q2.png"]}),
    (["classify", "S", "q1.png", "--k", "3", "q2.png", "--labels", "L.csv"],
     {"store": "S", "queries": ["q1.png", "q2.png"], "k": 3}),
    (["dedup", "--threshold", "0.1", "S", "--out", "d.csv"], {"store": "S", "threshold": 0.1, "out": "d.csv"}),
    (["embed", "--out", "O", "SRC", "--batch-size", "4"], {"source": "SRC", "out": "O", "batch_size": 4}),
    (["eval", "nights", "--model", "l2", "ROOT", "--workers", "0"], {"root": "ROOT", "model": "l2", "workers": 0}),
    (["eval", "bapps", "--batch-size", "2", "ROOT", "--model", "l2"], {"root": "ROOT", "batch_size": 2}),
    (["eval", "jnd", "ROOT", "--model", "l2"], {"root": "ROOT", "model": "l2"}),
    (["eval", "retrieval", "--queries", "Q.csv", "S", "--labels", "L.csv"],
     {"store": "S", "queries": "Q.csv", "labels": "L.csv"}),
    (["train", "nights", "--model", "M", "ROOT", "--head", "mlp", "--out", "D"],
     {"root": "ROOT", "model": "M", "head": "mlp", "out": "D"}),
    (["download", "NAME"], {"name": "NAME"}),
])
def test_options_go_anywhere(argv, expected):
    parsed = _parse(argv)
    got = {k: (str(v) if hasattr(v, "parts") else [str(x) for x in v] if isinstance(v, list) else v)
           for k, v in parsed.items() if k in expected}
    assert got == expected


def test_classify_in_the_readmes_order(workspace, capsys):
    code, out, err = _run(capsys, ["classify", workspace / "store", "--labels", workspace / "labels.csv",
                                   workspace / "images/img1.png", workspace / "images/img2.png", "--k", "1",
                                   "--device", "cpu"])
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines()[2:]] == ["b", "a"]  # each image is its own neighbour


@pytest.mark.parametrize("argv,usage", [
    (["classify", "S", "q.png", "--labels", "L.csv", "--bogus"], "usage: rpmetric classify"),
    (["search", "S", "q.png", "--bogus"], "usage: rpmetric search"),
    (["eval", "nights", "ROOT", "--bogus"], "usage: rpmetric eval nights"),
    (["distance", "a.png", "b.png", "c.png", "--bogus"], "usage: rpmetric distance"),
])
def test_errors_show_the_commands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "unrecognized arguments: --bogus" in err


# -- 9. CLI words for CLI users -----------------------------------------------------------------------------
@pytest.mark.parametrize("python,cli", [
    ("pass `resume=True` to continue", "pass --resume to continue"),
    ("pass `skip_bad=True` to skip it", "pass --skip-bad to skip it"),
    ("or pass `skipped=[]` to skip it", "or pass --skip-bad to skip it"),
    ("use `device='cpu'`", "use --device cpu"),
    ("Argument `batch_size` must be at least 1", "Argument `batch_size` must be at least 1"),  # no option form
])
def test_cli_words(python, cli):
    from rpmetric.cli import cli_words

    assert cli_words(python) == cli


def test_existing_log_message_in_each_language(fresh_nights, tmp_path, capsys):
    from rpmetric.evaluation import evaluate, load_distances, load_groups

    log = tmp_path / "run.jsonl"
    log.write_text('{"config": {}}\n')
    code, _, err = _run(capsys, ["eval", "nights", fresh_nights, "--model", "l2", "--workers", "0", "--log", log])
    assert code == 2 and "pass --resume to continue" in err and "resume=" not in err
    task, groups, _ = load_groups("nights", fresh_nights, ["test"], "val")
    with pytest.raises(FileExistsError, match=r"pass `resume=True` to continue") as info:
        evaluate(load_distances("l2"), task, groups, log=log)
    assert "--" not in str(info.value)


def test_library_messages_use_python_words():
    """Modules below rpmetric.cli speak to Python callers; CLI options belong in rpmetric/cli (and the
    argparse helpers beside their features), which translates the Python words."""
    import pathlib
    import re

    import rpmetric

    package = pathlib.Path(rpmetric.__file__).parent
    cli_helpers = {package / "attacks" / "cli.py", package / "counterattack.py"}
    offenders = []
    for path in package.rglob("*.py"):
        if "cli" in path.relative_to(package).parts[:1] or path in cli_helpers:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"pass --|\((resume|skip_bad|skipped|overwrite)=", line):
                offenders.append(f"{path.relative_to(package)}:{number}")
    assert not offenders
# -- 2. --device, checked first ------------------------------------------------------------------
ABSENT_DEVICES = ["gpu", "cuda:99", "tpu0"] + ([] if torch.cuda.is_available() else ["cuda"]) + \
                 ([] if torch.backends.mps.is_available() else ["mps"])
DEVICE_COMMANDS = [
    ["distance", "nope1.png", "nope2.png"],
    ["embed", "nope-folder", "--out", "nope-store"],
    ["search", "nope-store", "q.png"],
    ["classify", "nope-store", "q.png", "--labels", "nope.csv"],
    ["eval", "nights", "nope-root"],
    ["eval", "retrieval", "nope-store", "--queries", "nope.csv"],
    ["train", "nights", "nope-root", "--head", "mlp", "--out", "nope-out"],
]


@pytest.mark.parametrize("device", ABSENT_DEVICES)
@pytest.mark.parametrize("argv", DEVICE_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_absent_device_is_one_line_before_anything(argv, device, capsys):
    code, _, err = _run(capsys, argv + ["--model", ABSENT_MODEL, "--device", device])
    assert code == 2
    assert err.count("\n") == 1 and f"--device {device}" in err and "nobody" not in err and "nope" not in err


def test_absent_device_in_a_fresh_process():
    result = run_cli(["distance", "a.png", "b.png", "--device", "cuda:99"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "cuda:99" in result.stderr


def test_library_checks_the_device_before_loading():
    import rpmetric

    with pytest.raises(ValueError, match=r"`device='cuda:99'`"):
        rpmetric.RobustDistance(ABSENT_MODEL, device="cuda:99")


# -- 3. inputs, checked before the model -----------------------------------------------------------
def _missing_inputs(ws):
    """(argv, the path the error must name) for each command's inputs."""
    (ws / "bad-pairs.csv").write_text("a,b\nimages/img0.png,images/gone.png\n")
    (ws / "bad-queries.csv").write_text("path,label\nimages/gone.png,a\n")
    s, lab = ws / "store", ws / "labels.csv"
    return [
        (["distance", ws / "nope1.png", ws / "nope2.png"], "nope1.png"),
        (["distance", ws / "images/img0.png", ws / "nope2.png"], "nope2.png"),
        (["distance", "--pairs", ws / "bad-pairs.csv"], "gone.png"),
        (["embed", ws / "nope-folder", "--out", ws / "out-store"], "nope-folder"),
        (["search", ws / "nope-store", ws / "images/img0.png"], "nope-store"),
        (["search", s, ws / "nope.png"], "nope.png"),
        (["classify", s, ws / "images/img0.png", "--labels", ws / "nope.csv"], "nope.csv"),
        (["classify", s, ws / "nope.png", "--labels", lab], "nope.png"),
        (["eval", "nights", ws / "nope-root"], "nope-root"),
        (["eval", "retrieval", s, "--queries", ws / "bad-queries.csv", "--labels", lab], "gone.png"),
        (["train", "nights", ws / "nope-root", "--head", "mlp", "--out", ws / "head"], "nope-root"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_inputs_are_checked_before_the_model(workspace, case, capsys, monkeypatch):
    argv, named = _missing_inputs(workspace)[case]
    monkeypatch.chdir(workspace)  # where default run logs go
    code, _, err = _run(capsys, argv + ["--model", ABSENT_MODEL, "--device", "cpu"])
    assert code == 2 and err.count("\n") == 1
    assert named in err and "nobody" not in err


# -- 4. Ctrl-C -----------------------------------------------------------------------------------------
def _interrupt_after_first(monkeypatch, module, name):
    """Make ``module.name`` do its work once, then raise KeyboardInterrupt (as Ctrl-C would)."""
    real = getattr(module, name)

    def once(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, name, once)


def _printed_command(err):
    """The arguments of the `rpmetric ...` command an interruption message prints."""
    import shlex

    words = shlex.split(err.split("`")[1])
    assert words[0] == "rpmetric"
    return words[1:]


def test_ctrl_c_in_eval_names_the_log_and_the_rerun(workspace, vit_folder, tmp_path, capsys, monkeypatch):
    from rpmetric.runlog import RunLog

    monkeypatch.chdir(tmp_path)
    _interrupt_after_first(monkeypatch, RunLog, "append")
    argv = ["eval", "nights", str(workspace / "nights"), "--model", str(vit_folder), "--device", "cpu",
            "--workers", "0", "--batch-size", "2", "--log", str(tmp_path / "run.jsonl")]
    code, _, err = _run(capsys, argv)
    assert code == 130
    assert f"saved in {tmp_path / 'run.jsonl'}" in err
    assert f"rpmetric {' '.join(argv[:3])} --model {vit_folder}" in err and err.rstrip().endswith("--resume` to continue.")
    monkeypatch.undo()
    code, _, err = _run(capsys, _printed_command(err))  # it does finish the run
    assert code == 0, err


def test_ctrl_c_in_embed_says_rerun_resumes(workspace, vit_folder, tmp_path, capsys, monkeypatch):
    from rpmetric.stores import store

    _interrupt_after_first(monkeypatch, store, "_write_shard")
    argv = ["embed", str(workspace / "images"), "--out", str(tmp_path / "s"), "--model", str(vit_folder),
            "--device", "cpu", "--workers", "0", "--quiet", "--shard-size", "2", "--overwrite"]
    code, _, err = _run(capsys, argv)
    assert code == 130
    assert f"saved in {tmp_path / 's'}" in err and "--resume" not in err
    assert "--overwrite" not in err  # rerunning with it would start afresh
    monkeypatch.undo()
    code, out, err = _run(capsys, _printed_command(err))
    assert code == 0 and "4 images embedded" in out, err


def test_ctrl_c_in_train_names_the_checkpoint(workspace, vit_folder, tmp_path, capsys, monkeypatch):
    from rpmetric import training

    _interrupt_after_first(monkeypatch, training, "_write_checkpoint")
    argv = ["train", "nights", str(workspace / "nights"), "--model", str(vit_folder), "--head", "mlp",
            "--out", str(tmp_path / "head"), "--epochs", "2", "--workers", "0", "--device", "cpu"]
    code, _, err = _run(capsys, argv)
    assert code == 130
    assert f"saved in {tmp_path / 'head'}" in err and err.rstrip().endswith("--resume` to continue.")


def test_ctrl_c_before_anything_is_saved(capsys, monkeypatch):
    from rpmetric import cli

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["models"].set_defaults(func=lambda args: (_ for _ in ()).throw(
        KeyboardInterrupt))
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "rpmetric models: interrupted\n"


SLOW_EVAL = """
import sys, time
import rpmetric.runlog as runlog
real = runlog.RunLog.append
def slow(self, records):
    real(self, records)
    print("appended", flush=True)
    time.sleep(60)
runlog.RunLog.append = slow
from rpmetric.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_to_a_running_eval(workspace, vit_folder, tmp_path):
    log = tmp_path / "run.jsonl"
    argv = ["eval", "nights", str(workspace / "nights"), "--model", str(vit_folder), "--device", "cpu",
            "--workers", "0", "--batch-size", "2", "--log", str(log)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EVAL, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while proc.stdout.readline().strip() != "appended":  # a batch is in the log
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert f"saved in {log}" in err and "--resume` to continue." in err


# -- 5. pickled checkpoints --------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def _pickle_dump(obj, path):
    import pickle

    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.mark.parametrize("write,reason", [
    (torch.save, "Unsupported global: GLOBAL print"),  # torch's message here has ANSI escapes
    (_pickle_dump, "Unsupported operand"),
    (lambda obj, path: path.write_bytes(b"not a pickle"), ""),
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_checkpoint_error_is_one_clean_line(tmp_path, vit_folder, write, reason):
    import rpmetric

    (tmp_path / "open_clip_config.json").write_text((vit_folder / "open_clip_config.json").read_text())
    write({"visual.x": _Payload()}, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(rpmetric.CheckpointError) as info:
        rpmetric.RobustDistance(str(tmp_path), device="cpu")
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message and "\t" not in message
    assert str(tmp_path / "open_clip_pytorch_model.bin") in message and "safetensors" in message
    assert reason in message and "set to `False`" not in message  # torch's advice to unpickle anyway


# -- 6. the model-mismatch notice ------------------------------------------------------------------------
def test_search_with_another_model_gives_a_one_line_notice(workspace, vit_folder, tmp_path):
    other = shutil.copytree(vit_folder, tmp_path / "other-model")
    result = run_cli(["search", workspace / "store", workspace / "images/img0.png", "--model", other,
                      "--device", "cpu", "--k", "1"])
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("rpmetric search: warning: Model ") and result.stderr.count("\n") == 1
    assert "warnings.warn" not in result.stderr and "UserWarning" not in result.stderr


def test_the_library_still_warns(workspace, vit_folder, tmp_path):
    from rpmetric.stores.store import EmbeddingStore

    other = shutil.copytree(vit_folder, tmp_path / "other-model")
    with pytest.warns(UserWarning, match="differs from the model that built store"):
        EmbeddingStore(workspace / "store").load_metric(str(other), "cpu")


# -- 7. distances keep their significant digits --------------------------------------------------------
@pytest.mark.parametrize("value,text", [
    (0.0, "0"), (0.5, "0.5"), (1.2345678, "1.23457"), (3.1e-7, "3.1e-07"), (0.000123456789, "0.000123457"),
    (2.0, "2"),
])
def test_format_distance(value, text):
    from rpmetric.cli.common import format_distance

    assert format_distance(value) == text


def test_close_distinct_images_do_not_print_zero(tmp_path, vit_folder, tiny_metric, capsys):
    import rpmetric

    a = _save(tmp_path / "a.png", 0, size=(32, 32))
    arr = __import__("numpy").asarray(Image.open(a)).copy()
    arr[0, 0, 0] ^= 1  # one pixel, one level
    Image.fromarray(arr).save(tmp_path / "b.png")
    expected = tiny_metric(rpmetric.load_image(a), rpmetric.load_image(tmp_path / "b.png")).item()
    assert 0 < expected < 5e-7  # else this would not test the rounding
    code, out, _ = _run(capsys, ["distance", a, tmp_path / "b.png", "--model", vit_folder, "--device", "cpu"])
    assert code == 0 and float(out) == pytest.approx(expected, rel=1e-4)


# -- 8. short rows of --pairs ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,line", [
    ("a,b\nimages/img0.png\n", 2),
    ("a,b\nimages/img0.png,images/img1.png\nimages/img2.png,\n", 3),
    ("a,b\n,images/img1.png\n", 2),
])
def test_short_pairs_rows(workspace, tmp_path, text, line, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(text.replace("images/", f"{workspace}/images/"))
    code, _, err = _run(capsys, ["distance", "--pairs", pairs, "--model", ABSENT_MODEL])
    assert code == 2 and err.count("\n") == 1
    assert f"{pairs}, line {line}" in err and "NoneType" not in err


def test_short_rows_of_any_csv_name_the_line(tmp_path):
    from rpmetric.files import read_csv_columns

    (tmp_path / "labels.csv").write_text("path,label,extra\na.png,cat,1\nb.png\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 3: no value in column label; every row needs path,label"):
        read_csv_columns(tmp_path / "labels.csv", ("path", "label"))
