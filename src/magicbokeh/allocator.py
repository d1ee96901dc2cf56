"""Settings of glibc's memory allocator that suit a process working on image-sized buffers.

A 12 MP render allocates and frees many buffers of tens to hundreds of megabytes. With
glibc's defaults each one above the dynamic mmap threshold is a fresh ``mmap`` whose pages
fault in on first touch and go back to the system on ``free``, and the top of the heap is
trimmed after every large free; the kernel time this costs was about a sixth of a whole
``magicbokeh render`` command on 12 MP (see ``docs/benchmarks_render.md``). The settings keep
freed memory in the process for reuse instead:

- ``M_MMAP_THRESHOLD`` 32 MiB (its maximum on 64-bit; fixed, so no longer dynamic),
- ``M_TRIM_THRESHOLD`` 4 GiB and ``M_TOP_PAD`` 256 MiB (free memory stays in the heap),
- ``M_ARENA_MAX`` 2 (worker threads share two arenas, so they reuse each other's memory).

The cost is a higher resident size after peaks (memory is returned when the process ends).
The command line applies them at start; a Python program may call :func:`tune_allocator`.
Nothing is changed on other C libraries or systems, or when the user has set any
``MALLOC_*`` environment variable (theirs wins).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["SETTINGS", "tune_allocator"]

#: mallopt parameter number → value (numbers from glibc's malloc.h).
SETTINGS: dict[int, int] = {
    -3: 32 * 1024 * 1024,  # M_MMAP_THRESHOLD
    -1: 4 * 1024 * 1024 * 1024 - 1,  # M_TRIM_THRESHOLD (an int)
    -2: 256 * 1024 * 1024,  # M_TOP_PAD
    -8: 2,  # M_ARENA_MAX
}


def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` to this process through glibc's ``mallopt``.

    Returns True when every setting was accepted; False (changing nothing further) on a system
    without glibc or when a ``MALLOC_*`` environment variable is set.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
