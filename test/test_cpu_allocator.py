"""The CPU allocator setting: large freed buffers are reused instead of faulted in again (glibc only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Allocates one 64 MiB tensor and prints how many bytes glibc holds in separate mmapped blocks while it
# is alive (mallinfo2's hblkhd). 64 MiB is above the 32 MiB ceiling of glibc's dynamic mmap threshold,
# so by default the tensor is its own mapping, which free() unmaps and the next step faults in again.
_PLACEMENT = '''
import ctypes, json, sys
import torch
sys.path.insert(0, {root!r})
from occluded_ppe_ros.cpu_allocator import keep_large_buffers_in_heap


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
        'keepcost')]


libc = ctypes.CDLL('libc.so.6')
applied = keep_large_buffers_in_heap() if {apply} else None
buffer = torch.empty(16 * 1024 * 1024)
if hasattr(libc, 'mallinfo2'):  # glibc 2.33 and later
    libc.mallinfo2.restype = MallInfo2
    mmapped_bytes = libc.mallinfo2().hblkhd
else:
    mmapped_bytes = None
print(json.dumps({{'applied': applied, 'mmapped_bytes': mmapped_bytes}}))
'''

# Allocates and frees a 64 MiB tensor `loops` times, as a training step does with its activations, and
# prints the minor page faults those allocations cost.
_CHURN = '''
import json, resource, sys
import torch
sys.path.insert(0, {root!r})
from occluded_ppe_ros.cpu_allocator import keep_large_buffers_in_heap
applied = keep_large_buffers_in_heap() if {apply} else None
torch.ones(16 * 1024 * 1024).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({loops}):
    buffer = torch.empty(16 * 1024 * 1024)
    buffer.fill_(1.0)
    del buffer
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{'applied': applied, 'faults': faults}}))
'''

_BUFFER_BYTES = 64 * 1024 * 1024
_BUFFER_PAGES = _BUFFER_BYTES // 4096


def _run(script: str, apply: bool, extra_env: dict[str, str] | None = None, loops: int = 20) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, '-c', script.format(root=str(REPO_ROOT), apply=apply, loops=loops)],
                         env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _is_glibc() -> bool:
    import platform

    return sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not _is_glibc(), reason='mallopt is glibc only')
def test_a_large_buffer_lives_in_the_heap_instead_of_its_own_mapping():
    default = _run(_PLACEMENT, apply=False)
    tuned = _run(_PLACEMENT, apply=True)
    if default['mmapped_bytes'] is None:
        pytest.skip('glibc older than 2.33 has no mallinfo2')
    assert tuned['applied'] is True
    assert default['mmapped_bytes'] >= _BUFFER_BYTES, default
    assert tuned['mmapped_bytes'] < _BUFFER_BYTES, tuned


@pytest.mark.skipif(not _is_glibc(), reason='mallopt is glibc only')
def test_reused_buffers_stop_faulting_while_fresh_mappings_fault_every_time():
    default = _run(_CHURN, apply=False, loops=40)
    tuned = _run(_CHURN, apply=True, loops=40)
    # by default each 64 MiB allocation is a fresh mapping: all its pages are faulted in every round
    assert default['faults'] > 40 * _BUFFER_PAGES * 0.6, default
    # tuned, the first few rounds still land at new, higher addresses of the heap (fresh pages) and then one
    # address is reused without faults; the number of such rounds varies from run to run (2 to 7 of 40 seen
    # here and in CI)
    assert tuned['faults'] < 10 * _BUFFER_PAGES, (tuned, default)


def test_an_environment_setting_is_left_alone():
    result = _run(_CHURN, apply=True, extra_env={'MALLOC_MMAP_THRESHOLD_': '131072'})
    assert result['applied'] is False
