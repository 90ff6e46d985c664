"""Give freed heap memory back to the operating system between big steps.

glibc keeps freed memory in per-thread arenas, and Arrow's allocator (mimalloc) keeps
its own; after the tokenizer's threads free their encodings and a batch of Arrow
buffers is dropped, a process can hold a few hundred MB it no longer uses, which shows
as RSS. ``malloc_trim(0)`` (glibc only) and ``MemoryPool.release_unused()`` return it,
in a few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_trim = None
if sys.platform.startswith("linux"):
    try:
        _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        _trim = None


def release_freed_memory() -> None:
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    if _trim is not None:
        _trim(0)
