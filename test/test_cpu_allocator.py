"""The CPU allocator setting: large freed buffers are reused instead of faulted in again (glibc only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MiB tensor `loops` times, as a training step does with its activations, and
# prints the minor page faults those allocations cost. 64 MiB is above the 32 MiB ceiling of glibc's
# dynamic mmap threshold, so by default every allocation is a fresh mapping.
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


def _churn(apply: bool, extra_env: dict[str, str] | None = None, loops: int = 20) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, '-c', _CHURN.format(root=str(REPO_ROOT), apply=apply, loops=loops)],
                         env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _is_glibc() -> bool:
    import platform

    return sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not _is_glibc(), reason='mallopt is glibc only')
def test_reused_buffers_stop_faulting_while_fresh_mappings_fault_every_time():
    default = _churn(apply=False, loops=20)
    tuned_short = _churn(apply=True, loops=20)
    tuned_long = _churn(apply=True, loops=40)
    assert tuned_short['applied'] is True
    # by default each 64 MiB allocation is a fresh mapping: 16384 pages faulted in every time
    assert default['faults'] > 20 * 10000, default
    # tuned, the heap settles after a few rounds and then reuses the buffer: twice the rounds cost
    # (almost) no more faults
    assert tuned_short['faults'] < default['faults'] / 3, (tuned_short, default)
    assert tuned_long['faults'] < tuned_short['faults'] + 2 * 16384, (tuned_long, tuned_short)


def test_an_environment_setting_is_left_alone():
    result = _churn(apply=True, extra_env={'MALLOC_MMAP_THRESHOLD_': '131072'})
    assert result['applied'] is False
