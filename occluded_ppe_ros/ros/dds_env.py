"""DDS environment for tests, demos and benchmarks: discovery and traffic stay on this machine.

Fast DDS multicasts discovery out of the machine's network interface unless told otherwise; every
process that starts rclpy for a test, a demo or a benchmark must run with `loopback_env()` applied
(before `rclpy.init`) or be started with it as its environment. A vehicle deployment configures its
own DDS and does not use this module.

No rclpy import here: it must be usable before rclpy is imported.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Literal

# Fast DDS profile with a 32 MiB shared-memory segment plus UDPv4 on 127.0.0.1 only.
_SHARE_SUFFIX = Path('share') / 'occluded_ppe_ros' / 'config' / 'fastdds_loopback_shm.xml'
_SOURCE_PROFILE = Path(__file__).resolve().parents[2] / 'config' / 'fastdds_loopback_shm.xml'

Transport = Literal['udp', 'shm']


def loopback_profile_path() -> Path:
    """Path of the loopback SHM+UDP Fast DDS profile (source tree first, then the install prefix)."""
    if _SOURCE_PROFILE.is_file():
        return _SOURCE_PROFILE
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        candidate = Path(prefix) / _SHARE_SUFFIX
        if prefix and candidate.is_file():
            return candidate
    import sys
    candidate = Path(sys.prefix) / _SHARE_SUFFIX
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f'Fast DDS profile not found: neither {_SOURCE_PROFILE} nor '
                            f'<prefix>/{_SHARE_SUFFIX} exists')


def loopback_env(transport: Transport = 'shm', domain_id: int | None = None,
                 base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment with loopback-only DDS.

    Args:
        transport: 'udp' = builtin UDPv4 only (no shared-memory files are left behind when a process
            is killed, but large best-effort samples are lost: fine for small messages and reliable
            QoS); 'shm' = the loopback SHM+UDP profile, which delivers real-size best-effort images.
        domain_id: ROS_DOMAIN_ID to use; a random one in [1, 100] when None (isolates concurrent runs).
        base: the environment to start from (default: a copy of os.environ).

    Returns:
        A new dict; `base` is not modified.
    """
    env = dict(os.environ if base is None else base)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_LOCALHOST_ONLY', None)  # deprecated; conflicts with the discovery range
    env.pop('ROS_STATIC_PEERS', None)
    env['ROS_DOMAIN_ID'] = str(random.randint(1, 100) if domain_id is None else domain_id)
    env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    if transport == 'udp':
        env['FASTDDS_BUILTIN_TRANSPORTS'] = 'UDPv4'
        env.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    elif transport == 'shm':
        env.pop('FASTDDS_BUILTIN_TRANSPORTS', None)  # it would override the profile
        env['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(loopback_profile_path())
    else:
        raise ValueError(f"transport must be 'udp' or 'shm', got {transport!r}")
    return env


def apply_loopback_env(transport: Transport = 'shm', domain_id: int | None = None) -> dict[str, str]:
    """Apply `loopback_env` to this process's os.environ (call before importing/initialising rclpy)."""
    env = loopback_env(transport, domain_id)
    for key in ('ROS_LOCALHOST_ONLY', 'ROS_STATIC_PEERS', 'FASTDDS_BUILTIN_TRANSPORTS',
                'FASTRTPS_DEFAULT_PROFILES_FILE'):
        if key not in env:
            os.environ.pop(key, None)
    os.environ.update(env)
    return env


def child_env(env: dict[str, str]) -> dict[str, str]:
    """Environment for a child Python process of another interpreter or venv.

    The ROS wheels' .pth hook re-executes Python with its own LD_LIBRARY_PATH and marks that with
    _ROS_WHEELS_BOOTSTRAP_COMPLETE; a child must redo that bootstrap itself, so drop both.
    """
    cleaned = dict(env)
    cleaned.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)
    cleaned.pop('LD_LIBRARY_PATH', None)
    return cleaned
