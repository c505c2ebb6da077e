"""Keep PyTorch's large CPU buffers in the malloc heap instead of mapping and unmapping them each step.

glibc serves an allocation above its mmap threshold (128 KiB at first, raised dynamically up to
32 MiB) with a fresh `mmap`, and gives it back with `munmap` when freed. A CPU training step allocates
and frees the same multi-megabyte activation buffers every iteration, so every step faults in fresh
zero pages again: on this project's 2-core VM a tiny-preset stage-2 step took about 750 000 minor page
faults per 60 iterations, and some convolutions ran 5-10x slower on a fresh buffer than on a reused one
(a stride-2 depthwise conv of MoveNet's body: 23 ms after an `F.pad`, 3 ms on a reused buffer).
Raising the mmap threshold to 256 MiB and the trim threshold to 1 GiB keeps those buffers in the heap
and reuses them (what tcmalloc and jemalloc, which PyTorch's CPU performance guide recommends, do by
design). The same 60 steps then took about 190 000 faults, nearly all of them start-up.

The trainer on the CPU and the torch inference backend on the CPU both call it. Eager inference has the
same pattern: the default model on a 640x480 image took about 21 000 faults per call by default.

Only glibc has `mallopt`; elsewhere (macOS, musl) this is a no-op. A user who sets
`MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in the environment keeps their own setting.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 256 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_ENVIRONMENT_OVERRIDES = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')


def keep_large_buffers_in_heap() -> bool:
    """Set glibc's mmap and trim thresholds for a CPU training process (see the module docstring).

    Process-wide and idempotent. Freed memory up to TRIM_THRESHOLD_BYTES stays with the process
    instead of going back to the kernel, which is what makes the buffers reusable.

    Returns:
        True when both thresholds were set; False on a C library without `mallopt`, when the
        environment already sets either threshold, or when glibc refused a value.
    """
    if any(name in os.environ for name in _ENVIRONMENT_OVERRIDES):
        return False
    library = ctypes.util.find_library('c')
    if library is None:
        return False
    try:
        libc = ctypes.CDLL(library)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 when it rejects the value
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
