"""Test harness: loopback-only DDS for every test, real rclpy contexts, nodes in subprocesses.

The DDS environment is applied here, at import time, before any test module can import rclpy:
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (no discovery traffic leaves the machine), a random
ROS_DOMAIN_ID for this run (isolation from concurrent runs), and builtin UDPv4 only (killed processes
leave no shared-memory files). Tests that send real-size best-effort images start their processes
with `ros_env('shm')`, the loopback shared-memory profile.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from occluded_ppe_ros.ros.dds_env import apply_loopback_env, loopback_env  # noqa: E402
from occluded_ppe_ros.source_tree import import_training_from_source  # noqa: E402

import_training_from_source(REPO_ROOT)

TEST_DOMAIN_ID = random.randint(1, 100)
apply_loopback_env('udp', domain_id=TEST_DOMAIN_ID)

SHARED_DIR = REPO_ROOT.parent / 'shared'


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'ros: starts rclpy (loopback-only DDS)')
    config.addinivalue_line('markers', 'slow: takes more than ~20 s')


@pytest.fixture(scope='session', autouse=True)
def _dds_stays_on_loopback() -> None:
    """Fail loudly if anything removed the loopback-only discovery setting."""
    assert os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') == 'LOCALHOST'
    yield
    assert os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') == 'LOCALHOST'


@pytest.fixture
def ros_env() -> Callable[..., dict[str, str]]:
    """Factory: environment for a child process in this run's DDS domain ('udp' or 'shm')."""
    def make(transport: str = 'udp') -> dict[str, str]:
        return loopback_env(transport, domain_id=TEST_DOMAIN_ID)
    return make


@pytest.fixture
def ros_context():
    """A fresh, initialised rclpy Context, shut down after the test."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    yield context
    if context.ok():
        rclpy.shutdown(context=context)


class SpinningExecutor:
    """A MultiThreadedExecutor spinning in a background thread; `wait_for` polls a predicate."""

    def __init__(self, context) -> None:
        from rclpy.executors import MultiThreadedExecutor

        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except (ExternalShutdownException, RuntimeError):
            pass

    def add(self, node):
        self.executor.add_node(node)
        return node

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.01) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(period)
        return predicate()

    def shutdown(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)


@pytest.fixture
def spinning_executor(ros_context):
    """A SpinningExecutor on `ros_context`; nodes added to it are destroyed after the test."""
    spinner = SpinningExecutor(ros_context)
    yield spinner
    nodes = list(spinner.executor.get_nodes())
    spinner.shutdown()
    for node in nodes:
        node.destroy_node()


class ChildProcess:
    """A process started for a test, stopped with SIGINT, then killed if it does not exit."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        self.output = ''

    def stop(self, timeout: float = 5.0) -> int:
        """Stop the child (SIGINT, then kill) and return its exit code; `output` holds its log."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, _ = self.popen.communicate(timeout=timeout)
        self.output += out or ''
        return self.popen.returncode


@pytest.fixture
def child_process(ros_env):
    """Factory: start a child (in this run's DDS domain); every child is stopped after the test."""
    children: list[ChildProcess] = []

    def start(args: list[str], transport: str = 'udp', extra_env: dict[str, str] | None = None,
              cwd: Path | None = None) -> ChildProcess:
        env = ros_env(transport)
        env.update(extra_env or {})
        child = ChildProcess(args, env, cwd)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()


@pytest.fixture
def shared_data_dir() -> Path:
    """../shared/data when present (a developer machine); the test is skipped on a fresh clone."""
    path = SHARED_DIR / 'data'
    if not path.is_dir():
        pytest.skip(f'{path} is absent (only on the project machines); this test needs real data')
    return path
