"""The resumable batch loop every attack evaluation shares (rpmetric.attacks.batches): fixed
batches, a run log that keeps each finished batch through Ctrl-C, a resume that redoes only the
unfinished ones; and the same through the odd-one-out and the IQA shift attacks."""

from __future__ import annotations

import datagen
import iqadata
import pytest
import torch
from interrupt import interrupt_at_call

import rpmetric.attacks.correlation as correlation_module
import rpmetric.attacks.oddoneout as oddoneout_module
from rpmetric.attacks.batches import attack_in_batches, fixed_batches
from rpmetric.datasets import read_iqa, read_things
from rpmetric.runlog import RunLog


class Items(torch.utils.data.Dataset):
    """Item i holds the number i; the ones in `bad` fail to load."""

    def __init__(self, n, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i, "error": "truncated file"} if i in self.bad else {"index": i, "x": torch.tensor(float(i))}


def _squares(batch, keys, seen):
    seen.append(list(keys))
    return [{"key": k, "square": float(v) ** 2} for k, v in zip(keys, batch["x"])]


KEYS = [f"k{i}" for i in range(7)]


def test_fixed_batches_cover_every_index_once_in_order():
    for n, size in [(7, 3), (6, 3), (1, 5), (0, 2)]:
        batches = fixed_batches(n, size)
        assert [i for b in batches for i in b] == list(range(n))
        assert all(len(b) == size for b in batches[:-1]) and all(0 < len(b) <= size for b in batches)


def test_an_interrupted_run_resumes_with_only_the_unfinished_batches(tmp_path):
    seen = []

    def attack(batch, keys):
        if keys[0] == "k3":
            seen.append(list(keys))
            raise KeyboardInterrupt  # Ctrl-C in the second batch
        return _squares(batch, keys, seen)

    path = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        attack_in_batches(Items(7), KEYS, 3, RunLog(path, {"n": 7}, False), attack, item="Item", source="`items`",
                          desc="test", progress=False)
    assert seen == [["k0", "k1", "k2"], ["k3", "k4", "k5"]]
    assert len(path.read_text().splitlines()) == 1 + 3  # the config line and the first batch's records
    seen.clear()
    records = attack_in_batches(Items(7), KEYS, 3, RunLog(path, {"n": 7}, True), lambda b, k: _squares(b, k, seen),
                                item="Item", source="`items`", desc="test", progress=False)
    assert seen == [["k3", "k4", "k5"], ["k6"]]
    assert [r["key"] for r in records] == KEYS and [r["square"] for r in records] == [i * i for i in range(7)]
    assert RunLog(path, {"n": 7}, True).done.keys() == set(KEYS)  # the log was released and holds everything


def test_a_record_that_cannot_be_loaded_is_named(tmp_path):
    path = tmp_path / "run.jsonl"
    with pytest.raises(ValueError, match=r"^Item 'k4' cannot be loaded: truncated file \(2 bad item\(s\) in this "
                                         r"batch\); fix or remove them from `items`\.$"):
        attack_in_batches(Items(7, bad={4, 5}), KEYS, 3, RunLog(path, {"n": 7}, False),
                          lambda b, k: _squares(b, k, []), item="Item", source="`items`", desc="test", progress=False)
    assert len(RunLog(path, {"n": 7}, True).done) == 3  # the batch before it was kept


def test_the_progress_postfix_sees_every_finished_record(capsys):
    shown = []
    attack_in_batches(Items(5), KEYS[:5], 2, None, lambda b, k: _squares(b, k, []), item="Item", source="`items`",
                      desc="test", progress=False, postfix=lambda done: shown.append(sorted(done)) or {})
    assert shown == [KEYS[:2], KEYS[:4], KEYS[:5]]


def test_the_odd_one_out_attack_resumes_exactly(tiny_metric, tmp_path, monkeypatch):
    root = datagen.write_things(tmp_path / "things", datagen.THINGS_KNOWN_ANY_METRIC[0])
    kwargs = dict(eps=8 / 255, steps=2, batch_size=1, progress=False)
    uninterrupted = oddoneout_module.evaluate_odd_one_out_attack(tiny_metric, read_things(root), **kwargs)
    calls = interrupt_at_call(monkeypatch, oddoneout_module, "_attack_batch", 3)
    log = tmp_path / "odd.jsonl"
    with pytest.raises(KeyboardInterrupt):
        oddoneout_module.evaluate_odd_one_out_attack(tiny_metric, read_things(root), runlog_path=log, **kwargs)
    calls.clear()
    resumed = oddoneout_module.evaluate_odd_one_out_attack(tiny_metric, read_things(root), runlog_path=log,
                                                           resume=True, **kwargs)
    assert len(calls) == 2  # the third and fourth of four triplets
    assert resumed.records == uninterrupted.records
    assert resumed.robust_accuracy == uninterrupted.robust_accuracy


def test_the_iqa_shift_attack_resumes_exactly(tiny_metric, tmp_path, monkeypatch):
    root = tmp_path / "tid"
    iqadata.write_tid2013(root, [(2, 5.0, "01"), (4, 4.0, "01"), (6, 4.0, "02"), (8, 1.0, "02"), (10, 2.0, "02")])
    pairs, higher = read_iqa("tid2013", root)
    kwargs = dict(eps=8 / 255, steps=3, batch_size=2, progress=False)
    uninterrupted = correlation_module.evaluate_shift(tiny_metric, pairs, higher, **kwargs)
    calls = interrupt_at_call(monkeypatch, correlation_module, "_shift_batch", 2)
    log = tmp_path / "shift.jsonl"
    with pytest.raises(KeyboardInterrupt):
        correlation_module.evaluate_shift(tiny_metric, pairs, higher, runlog_path=log, **kwargs)
    calls.clear()
    resumed = correlation_module.evaluate_shift(tiny_metric, pairs, higher, runlog_path=log, resume=True, **kwargs)
    assert len(calls) == 2  # pairs 3-4 and 5
    assert resumed.records == uninterrupted.records
