"""Keep glibc's heap from holding freed blocks of a long streaming pass.

glibc serves an allocation below its mmap threshold from the heap, and raises that threshold to
the size of each mmapped block freed (up to 32 MB). The streaming passes free and allocate float32
temporaries of about 16 MB many thousands of times, and the heap keeps what they freed: confirming
1.5 M pairs of a 4 M-row store peaked at 2.09 to 3.49 GiB (the more large blocks the process had
freed before, the more), and at 1.75 GiB with the threshold fixed at 1 MiB, which also turns off
the dynamic raise. The whole dedup of a 10 M-row store peaked at 3.68 GiB at commit c9b5cb2, before
this fix, and at 2.29 GiB with it (commit 203848a).
"""

from __future__ import annotations

__all__ = ["MMAP_THRESHOLD", "bound_heap_growth"]

MMAP_THRESHOLD = 1 << 20  # bytes: blocks from this size up are mapped, and unmapped when freed
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_done = None


def bound_heap_growth() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` for this process (once); False where
    the C library is not glibc, which is left as it is.

    Example:
        >>> bound_heap_growth() in (True, False)
        True
    """
    global _done
    if _done is None:
        try:
            import ctypes

            _done = bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        except (OSError, AttributeError):  # not glibc
            _done = False
    return _done
