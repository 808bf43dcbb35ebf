"""glibc's mmap threshold, fixed by the store commands (rpmetric/stores/heap.py)."""

import platform
import subprocess
import sys

import pytest

glibc = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not glibc, reason="the threshold is glibc's")
def test_the_threshold_is_fixed_so_a_freed_large_block_leaves_the_resident_set():
    # In a fresh process: allocate, touch and free a 16 MB block three times. With glibc's dynamic
    # threshold the first free raises the threshold, the next block comes from the heap and stays
    # resident once freed; with the threshold fixed, each block is unmapped when freed.
    code = """
import ctypes, sys
from rpmetric.stores.heap import bound_heap_growth
fix = sys.argv[1] == "1"
if fix:
    assert bound_heap_growth() is True
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
size = 16 << 20
base = rss()
for _ in range(3):
    p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
print(rss() - base)
"""
    grown = {fix: int(subprocess.run([sys.executable, "-c", code, fix], capture_output=True, text=True,
                                     check=True).stdout) for fix in ("0", "1")}
    assert grown["1"] < 4 << 10  # KB: the block went back to the system
    assert grown["0"] > 12 << 10  # the default keeps it: the reason for the fix


def test_dedup_fixes_the_threshold(monkeypatch, tmp_path):
    from rpmetric.cli import main
    from rpmetric.stores import heap

    called = []
    monkeypatch.setattr(heap, "bound_heap_growth", lambda: called.append(True) or True)
    assert main(["dedup", str(tmp_path / "missing-store"), "--threshold", "0.1"]) == 2  # no store: a clean error
    assert called == [True]
