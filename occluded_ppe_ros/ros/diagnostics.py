"""Pipeline statistics for /diagnostics: per-stage latency, input and processed rates, drop counters.

`PipelineStats` is thread-safe (the subscription callbacks and the inference worker both record into
it) and has no ROS dependency beyond building the diagnostic_msgs message.
"""
from __future__ import annotations

import collections
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

# The stages timed for every processed frame, in pipeline order (milliseconds).
STAGES: tuple[str, ...] = ('decode', 'preprocess', 'inference', 'postprocess', 'track', 'publish')
# Counters, each reported as a total since configure.
COUNTERS: tuple[str, ...] = ('received', 'processed', 'superseded', 'too_old', 'rejected')
# Both rates count the events of the last RATE_WINDOW_S seconds (reported as `rate_window_s`): one
# window for both, so input and processed rates decay together when frames stop, and a rate is a plain
# count over a stated time rather than an extrapolation from the last few events.
RATE_WINDOW_S = 5.0


class PipelineStats:
    """Rolling latency statistics and counters of the node's pipeline.

    Args:
        window: number of most recent frames the latency and age statistics cover.
        rate_window_s: seconds the input and processed rates cover (the same window for both).
    """

    def __init__(self, window: int = 100, rate_window_s: float = RATE_WINDOW_S) -> None:
        if rate_window_s <= 0:
            raise ValueError(f'rate_window_s must be positive, got {rate_window_s}')
        self._lock = threading.Lock()
        self._window = window
        self.rate_window_s = float(rate_window_s)
        self.reset()

    def reset(self) -> None:
        """Forget everything (on configure)."""
        with self._lock:
            self._stage_ms = {stage: collections.deque(maxlen=self._window) for stage in STAGES}
            self._total_ms: collections.deque[float] = collections.deque(maxlen=self._window)
            self._age_ms: collections.deque[float] = collections.deque(maxlen=self._window)
            # event times (time.monotonic) of the last rate_window_s seconds
            self._received_times: collections.deque[float] = collections.deque()
            self._processed_times: collections.deque[float] = collections.deque()
            self._since = time.monotonic()
            self.counters = dict.fromkeys(COUNTERS, 0)
            self.last_rejection = ''
            self.last_event_rejected = False

    def count(self, counter: str, reason: str = '') -> None:
        """Add one to a counter of COUNTERS (`reason`: why, for 'rejected')."""
        with self._lock:
            self.counters[counter] += 1
            if counter == 'received':
                self._add_event(self._received_times)
            if counter == 'rejected':
                self.last_rejection = reason
                self.last_event_rejected = True

    def record_frame(self, stage_ms: dict[str, float], age_ms: float) -> None:
        """Record a processed frame.

        Args:
            stage_ms: milliseconds per stage of STAGES (missing stages count as 0).
            age_ms: the frame's age when its last output was published (now - header stamp), ms.
        """
        with self._lock:
            for stage in STAGES:
                self._stage_ms[stage].append(float(stage_ms.get(stage, 0.0)))
            self._total_ms.append(sum(float(stage_ms.get(stage, 0.0)) for stage in STAGES))
            self._age_ms.append(age_ms)
            self.counters['processed'] += 1
            self.last_event_rejected = False
            self._add_event(self._processed_times)

    def _add_event(self, times: collections.deque[float]) -> None:
        now = time.monotonic()
        times.append(now)
        self._forget_before(times, now - self.rate_window_s)

    @staticmethod
    def _forget_before(times: collections.deque[float], start: float) -> None:
        while times and times[0] <= start:
            times.popleft()

    def _rate(self, times: collections.deque[float], now: float) -> float:
        """Events per second in the window ending now.

        The events of the last rate_window_s seconds over that time (over the time since reset while that
        is shorter, so a fresh start is not under-read).
        """
        self._forget_before(times, now - self.rate_window_s)
        span = min(self.rate_window_s, now - self._since)
        return len(times) / span if span > 0 else 0.0

    def summary(self) -> dict[str, float | int | str]:
        """Snapshot of the statistics.

        '<stage>_ms_mean', '<stage>_ms_max', 'total_ms_mean', 'age_ms_max', counters, and
        'input_rate_hz' / 'processed_rate_hz' over the last 'rate_window_s' seconds.
        """
        with self._lock:
            values: dict[str, float | int | str] = {}
            for stage in STAGES:
                samples = self._stage_ms[stage]
                values[f'{stage}_ms_mean'] = sum(samples) / len(samples) if samples else 0.0
                values[f'{stage}_ms_max'] = max(samples) if samples else 0.0
            values['total_ms_mean'] = sum(self._total_ms) / len(self._total_ms) if self._total_ms else 0.0
            values['age_ms_mean'] = sum(self._age_ms) / len(self._age_ms) if self._age_ms else 0.0
            values['age_ms_max'] = max(self._age_ms) if self._age_ms else 0.0
            now = time.monotonic()
            values['input_rate_hz'] = self._rate(self._received_times, now)
            values['processed_rate_hz'] = self._rate(self._processed_times, now)
            values['rate_window_s'] = self.rate_window_s
            values.update(self.counters)
            values['last_rejection'] = self.last_rejection
            return values


def diagnostic_array(stats: PipelineStats, header: Header, node_name: str, backend: str, model: str,
                     state: str) -> DiagnosticArray:
    """One DiagnosticStatus for the pipeline; every statistic of `PipelineStats.summary` is a key-value pair.

    Level: WARN when the node is not active, or when the latest input frame was rejected (bad input,
    reason in the message); OK otherwise.
    """
    values = stats.summary()
    status = DiagnosticStatus(name=f'{node_name}: pipeline', hardware_id=model)
    if state != 'active':
        status.level, status.message = DiagnosticStatus.WARN, f'{state}: not processing'
    elif stats.last_event_rejected:
        status.level, status.message = DiagnosticStatus.WARN, f"rejecting input: {values['last_rejection']}"
    elif values['received'] == 0:
        status.level, status.message = DiagnosticStatus.OK, 'active, waiting for images'
    else:
        status.level = DiagnosticStatus.OK
        status.message = (f"active: {values['processed_rate_hz']:.1f} Hz processed of "
                          f"{values['input_rate_hz']:.1f} Hz received (last {values['rate_window_s']:g} s)")
    pairs = [('backend', backend), ('model', model), ('state', state)]
    for key, value in values.items():
        text = f'{value:.3f}' if isinstance(value, float) else str(value)
        pairs.append((key, text))
    status.values = [KeyValue(key=key, value=value) for key, value in pairs]
    return DiagnosticArray(header=header, status=[status])
