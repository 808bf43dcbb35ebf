"""Run logs shared by concurrent runs, outputs that would overwrite each other, and the run-log
option under torchrun."""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap

import pytest

import datagen
from rpmetric.cli import build_parser, main
from rpmetric.runlog import RunLog, remove_if_empty

CONFIG = {"model": "l2"}


# -- concurrent runs ------------------------------------------------------------------------------
def _contender(path, resume, start, done, results):
    start.wait()  # both processes call RunLog at the same moment
    try:
        log = RunLog(path, CONFIG, resume=resume)
        results.put(("won", ""))
    except (FileExistsError, ValueError) as err:
        log = None
        results.put(("refused", str(err)))
    done.wait()  # the winner holds the log until both have tried
    if log is not None:
        log.close()


@pytest.mark.parametrize("mode", ["create", "resume", "create-or-resume"])
def test_of_two_runs_started_together_exactly_one_gets_the_log(tmp_path, mode):
    context = multiprocessing.get_context("fork")  # the contenders only open files
    for attempt in range(20):
        path = tmp_path / f"run{attempt}.jsonl"
        if mode == "resume":
            with RunLog(path, CONFIG, resume=False) as log:
                log.append([{"key": "a", "d": 0.5}])
        start, done, results = context.Barrier(2), context.Barrier(2), context.Queue()
        procs = [context.Process(target=_contender, args=(path, mode != "create", start, done, results))
                 for _ in range(2)]
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        assert [o[0] for o in outcomes] == ["refused", "won"], (attempt, outcomes)
        message = outcomes[0][1]
        assert str(path) in message and "\n" not in message, message
        assert "in use by another running process" in message or "already exists" in message, message
        lines = path.read_text().splitlines()
        assert [json.loads(line) for line in lines[:1]] == [{"config": CONFIG}], (attempt, lines)  # one header
        assert len(lines) == (2 if mode == "resume" else 1)
        assert RunLog(path, CONFIG, resume=True).done == ({"a": {"key": "a", "d": 0.5}} if mode == "resume" else {})
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files


def test_a_file_system_without_hard_links_creates_the_log_in_place(tmp_path, monkeypatch):
    import errno

    import rpmetric.runlog

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(rpmetric.runlog.os, "link", no_links)
    path = tmp_path / "run.jsonl"
    with RunLog(path, CONFIG, resume=False) as log:
        log.append([{"key": "a", "d": 0.5}])
    with pytest.raises(FileExistsError, match="already exists"):
        RunLog(path, CONFIG, resume=False)
    assert RunLog(path, CONFIG, resume=True).done == {"a": {"key": "a", "d": 0.5}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl"]  # no temporary file left


def _holder(path, ready, release):
    log = RunLog(path, CONFIG, resume=False)
    ready.wait()
    release.wait()
    log.close()


def test_a_log_another_process_holds_is_neither_resumed_nor_removed(tmp_path):
    context = multiprocessing.get_context("fork")
    path = tmp_path / "run.jsonl"
    ready, release = context.Barrier(2), context.Barrier(2)
    holder = context.Process(target=_holder, args=(path, ready, release))
    holder.start()
    try:
        ready.wait(timeout=60)
        with pytest.raises(FileExistsError, match=f"Run log {path} is in use by another running process"):
            RunLog(path, CONFIG, resume=True)
        with pytest.raises(FileExistsError, match="in use by another running process"):
            RunLog(path, CONFIG, resume=False)
        assert remove_if_empty(path) is False and path.exists()  # a losing run must not delete it
    finally:
        release.wait(timeout=60)
        holder.join(timeout=60)
    assert RunLog(path, CONFIG, resume=True).done == {}  # free again once the holder closed it


def _try_resume(path, results):
    try:
        RunLog(path, CONFIG, resume=True).close()
        results.put("won")
    except FileExistsError as err:
        results.put(str(err))


def test_a_closed_log_is_free_while_children_forked_from_its_run_live(tmp_path):
    """DataLoader workers are forked from the run: they must not keep its log locked after it ends."""
    context = multiprocessing.get_context("fork")
    path = tmp_path / "run.jsonl"
    log = RunLog(path, CONFIG, resume=False)
    release = context.Barrier(2)
    worker = context.Process(target=release.wait)  # a child that outlives the run's hold on the log
    worker.start()
    try:
        log.close()
        results = context.Queue()
        other = context.Process(target=_try_resume, args=(path, results))
        other.start()
        assert results.get(timeout=60) == "won"
        other.join(timeout=60)
    finally:
        release.wait(timeout=60)
        worker.join(timeout=60)


LAUNCHER = textwrap.dedent("""
    import glob, os, sys, time
    from rpmetric.cli import main
    flag = sys.argv[1]
    open(f"{flag}.{os.getpid()}", "w").close()
    while len(glob.glob(flag + ".*")) < 2:  # both processes are ready: start together
        time.sleep(0.001)
    sys.exit(main(sys.argv[2:]))
""")


def test_two_cli_runs_on_one_log_started_together(fresh_nights, tmp_path):
    launcher = tmp_path / "together.py"
    launcher.write_text(LAUNCHER)
    expected = datagen.nights_known(tmp_path / "expected")
    for attempt in range(3):
        log, flag = tmp_path / f"run{attempt}.jsonl", tmp_path / f"flag{attempt}"
        procs = [subprocess.Popen([sys.executable, str(launcher), str(flag), "eval", "nights", str(fresh_nights),
                                   "--model", "l2", "--workers", "0", "--batch-size", "1", "--run-log", str(log),
                                   "--out", str(tmp_path / f"out{attempt}-{k}.json")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
        outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        assert [code for code, _ in outcomes] == [0, 2], outcomes
        err = outcomes[1][1]
        assert len(err.strip().splitlines()) == 1 and str(log) in err and "Traceback" not in err, err
        lines = log.read_text().splitlines()
        assert len(lines) == 1 + 6 and sum('"config"' in line for line in lines) == 1  # one run's log, whole
        results = [json.loads((tmp_path / f"out{attempt}-{k}.json").read_text())["results"]
                   for k in range(2) if (tmp_path / f"out{attempt}-{k}.json").exists()]
        assert results == [{g: expected[g] for g in ("test_imagenet", "test_no_imagenet", "total")}]


# -- outputs that would overwrite each other ----------------------------------------------------
@pytest.mark.parametrize("options, named", [
    (["--run-log", "{d}/same.json", "--out", "{d}/same.json"], "same.json"),
    (["--log", "{d}/same.json", "--out", "{d}/sub/../same.json"], "same.json"),  # the alias; another spelling
    (["--out", "{d}/same.csv", "--per-sample", "{d}/same.csv"], "same.csv"),
    (["--run-log", "{d}/same.csv", "--per-sample", "{d}/same.csv"], "same.csv"),
    (["--out", "{d}/r.json", "--per-sample", "{d}/r.json.log.jsonl"], "r.json.log.jsonl"),  # the default log
    (["--out", "{d}/link.json", "--per-sample", "{d}/target.json"], "target.json"),  # through a symlink
])
def test_outputs_that_would_overwrite_each_other_are_refused_first(tmp_path, capsys, options, named):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    missing = tmp_path / "no-such-dataset"  # checked after the outputs: the run must stop before reading it
    code = main(["eval", "nights", str(missing), "--model", "l2", "--workers", "0",
                 *[o.format(d=tmp_path) for o in options]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert named in err and "the same file" in err and str(missing) not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "sub"]  # nothing written


# -- torchrun -------------------------------------------------------------------------------------
def _options():
    """(command words, option) for the first spelling of every option of every command."""
    found = []

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
            elif action.option_strings and action.option_strings[0] not in ("-h", "--help", "--version"):
                found.append((words, action.option_strings[0]))

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("words, option", _options(), ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_torchrun_passes_each_option_through(words, option):
    from torch.distributed.run import get_args_parser

    argv = ["--standalone", "--nproc_per_node", "2", "-m", "rpmetric", *words, option, "1"]
    try:
        parsed = get_args_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"torchrun refuses `{option}` after `-m rpmetric {' '.join(words)}`")
    assert parsed.training_script == "rpmetric" and parsed.training_script_args == [*words, option, "1"]


def test_torchrun_two_processes_write_and_resume_a_run_log(fresh_nights, tmp_path):
    log, out = tmp_path / "run.jsonl", tmp_path / "out.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "rpmetric", "eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0", "--batch-size",
                "1", "--run-log", str(log)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*torchrun, "--max-batches", "2"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=240)
    # rank 0 exits 3 (stopped early), which torchrun reports as a failure of the job
    assert first.returncode != 0 and "stopped after --max-batches 2: 2 of 6 done" in first.stderr, first.stderr
    assert len(log.read_text().splitlines()) == 1 + 2  # 2 batches of 1, dealt to 2 processes
    second = subprocess.run([*torchrun, "--resume", "--out", str(out)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=240)
    assert second.returncode == 0, second.stderr
    expected = datagen.nights_known(tmp_path / "expected")
    assert json.loads(out.read_text())["results"] == {g: expected[g] for g in
                                                      ("test_imagenet", "test_no_imagenet", "total")}
    assert len(log.read_text().splitlines()) == 1 + 6
