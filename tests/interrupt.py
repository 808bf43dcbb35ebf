"""Ctrl-C in the middle of a run, for the tests of resumption: one patched function raises
KeyboardInterrupt at a chosen call, once, and runs the real one otherwise."""

from __future__ import annotations

from typing import List


def interrupt_at_call(monkeypatch, owner, name: str, call: int) -> List[int]:
    """Patch ``owner.name`` so that its ``call``-th call (from 1) raises KeyboardInterrupt instead of
    doing its work; every other call, before and after, runs the real function.

    Returns:
        the list that each call appends to: clear it to count the calls of a resumed run.
    """
    real = getattr(owner, name)
    calls: List[int] = []
    armed = [True]

    def patched(*args, **kwargs):
        calls.append(1)
        if armed[0] and len(calls) == call:
            armed[0] = False
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)
    return calls
