"""Multi-object tracking scores of pedestrian tracks against MOTChallenge ground truth (`ppe eval tracking`).

Metrics come from `motmetrics` (py-motmetrics, CLEAR MOT and identity metrics; not hand-written):
MOTA, MOTP, IDF1, IDP, IDR, identity switches, fragmentations, mostly tracked / lost, false positives
and misses. A detection matches a ground-truth box when their IoU is at least `iou_threshold` (0.5, as
MOTChallenge). HOTA is not reported: TrackEval (its reference code) depends on opencv-python, which
cannot share a Python environment with this project's opencv-python-headless, and motmetrics 1.4.0 has
no HOTA.

Ground truth boxes whose visibility (gt.txt's 9th column, the visible share of the person) is below
`min_visibility` count as hidden: they are left out of the scores (no tracker output can find a person
no camera sees), and an output box that overlaps only such boxes is left out too (MOTChallenge treats
boxes of ignored people the same way).

Occlusion events: a maximal run of frames in which a person stays in the ground truth with visibility
below `min_visibility` (fully hidden), with visible frames before and after. Its identity is kept when
the output id matched to the person in the last visible frame before the run (looking back while they
are matched) equals the id matched in the first frame after it where they are matched; else it is an
identity switch across the occlusion. Events are counted by duration: up to 1 s and longer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import motmetrics as mm
import numpy as np

from occluded_ppe_ros.tracking.mot import read_mot
from occluded_ppe_ros.tracking.tracker import box_iou

MOTMETRICS = ('mota', 'motp', 'idf1', 'idp', 'idr', 'num_switches', 'num_fragmentations', 'mostly_tracked',
              'mostly_lost', 'num_false_positives', 'num_misses', 'num_objects', 'num_unique_objects')
SHORT_OCCLUSION_S = 1.0


@dataclass
class OcclusionEvent:
    """One full occlusion of one person: frames are 1-based, both ends inclusive."""

    person: int
    first_frame: int
    last_frame: int
    duration_s: float
    id_before: int | None = None
    id_after: int | None = None

    @property
    def switched(self) -> bool | None:
        """True if the output id changed across the occlusion; None if either side had no match."""
        if self.id_before is None or self.id_after is None:
            return None
        return self.id_before != self.id_after


@dataclass
class TrackingScores:
    """Scores of one or more sequences (see the module docstring)."""

    metrics: dict[str, float]
    events: list[OcclusionEvent] = field(default_factory=list)

    def occlusion_summary(self, max_duration_s: float = SHORT_OCCLUSION_S) -> dict[str, float]:
        """Events up to `max_duration_s` long: count, resolved (matched on both sides), switches, rate."""
        chosen = [e for e in self.events if e.duration_s <= max_duration_s]
        resolved = [e for e in chosen if e.switched is not None]
        switches = sum(bool(e.switched) for e in resolved)
        return {'events': len(chosen), 'resolved': len(resolved), 'switches': switches,
                'switches_per_event': switches / len(resolved) if resolved else float('nan')}

    def to_dict(self) -> dict:
        """JSON-ready: metrics, the event summaries (<= 1 s, longer, all) and every event."""
        longer = [e for e in self.events if e.duration_s > SHORT_OCCLUSION_S]
        return {'metrics': self.metrics,
                'occlusions_up_to_1s': self.occlusion_summary(SHORT_OCCLUSION_S),
                'occlusions_longer_than_1s': {
                    'events': len(longer), 'resolved': sum(e.switched is not None for e in longer),
                    'switches': sum(bool(e.switched) for e in longer)},
                'occlusions_all': self.occlusion_summary(float('inf')),
                'events': [{**asdict(e), 'switched': e.switched} for e in self.events]}


def _iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The IoU [A, B] of MOTChallenge rows' boxes (left, top, width, height in columns 2-5)."""
    def corners(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
    return box_iou(corners(first), corners(second))


def iou_distances(truth: np.ndarray, output: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The motmetrics distance matrix [A, B]: 1 - IoU, NaN (no match) below the IoU threshold.

    The same as `motmetrics.distances.iou_matrix(..., max_iou=1 - iou_threshold)`, which motmetrics 1.4.0
    cannot run on NumPy 2 (it calls the removed np.asfarray).
    """
    distances = 1.0 - _iou(truth, output)
    distances[distances > 1.0 - iou_threshold] = np.nan
    return distances


def accumulate(gt: np.ndarray, hypotheses: np.ndarray, min_visibility: float = 0.05,
               iou_threshold: float = 0.5) -> mm.MOTAccumulator:
    """A motmetrics accumulator over one sequence.

    Args:
        gt: ground-truth rows (`read_mot` of gt.txt): frame, id, left, top, width, height, conf, class,
            visibility; rows with conf 0 are ignored (MOTChallenge's convention).
        hypotheses: output rows: frame, id, left, top, width, height, score, ...
        min_visibility: ground-truth boxes below it are hidden (module docstring).
        iou_threshold: minimum IoU of a match.
    """
    accumulator = mm.MOTAccumulator(auto_id=False)
    gt = gt[gt[:, 6] != 0]
    frames = np.union1d(gt[:, 0], hypotheses[:, 0]).astype(int)
    for frame in frames:
        truth = gt[gt[:, 0] == frame]
        output = hypotheses[hypotheses[:, 0] == frame]
        hidden = truth[:, 8] < min_visibility
        if hidden.any() and len(output):
            # Output boxes that overlap a hidden person and no visible one are not false positives.
            best_hidden = _iou(truth[hidden], output).max(axis=0)
            best_seen = _iou(truth[~hidden], output).max(axis=0) if (~hidden).any() else np.zeros(len(output))
            output = output[~((best_hidden >= iou_threshold) & (best_seen < iou_threshold))]
        truth = truth[~hidden]
        distances = iou_distances(truth, output, iou_threshold)
        accumulator.update(truth[:, 1].astype(int).tolist(), output[:, 1].astype(int).tolist(), distances,
                           frameid=int(frame))
    return accumulator


def occlusion_events(gt: np.ndarray, fps: float, min_visibility: float = 0.05) -> list[OcclusionEvent]:
    """Full occlusions (module docstring) of every person in ground-truth rows of one sequence."""
    events = []
    for person in np.unique(gt[:, 1]).astype(int):
        rows = gt[gt[:, 1] == person]
        rows = rows[np.argsort(rows[:, 0])]
        hidden = rows[:, 8] < min_visibility
        index = 0
        while index < len(rows):
            if not hidden[index]:
                index += 1
                continue
            end = index
            while end + 1 < len(rows) and hidden[end + 1]:
                end += 1
            contiguous = np.all(np.diff(rows[index:end + 1, 0]) == 1)
            if index > 0 and end + 1 < len(rows) and contiguous:
                first, last = int(rows[index, 0]), int(rows[end, 0])
                events.append(OcclusionEvent(int(person), first, last, (last - first + 1) / fps))
            index = end + 1
    return events


def _resolve_events(events: list[OcclusionEvent], accumulator: mm.MOTAccumulator) -> None:
    """Fill each event's output ids before and after from the accumulator's matches."""
    table = accumulator.mot_events
    matched = table[table['Type'].isin(['MATCH', 'SWITCH'])]
    by_person: dict[int, dict[int, int]] = {}
    for (frame, _), row in matched.iterrows():
        by_person.setdefault(int(row['OId']), {})[int(frame)] = int(row['HId'])
    for event in events:
        matches = by_person.get(event.person, {})
        before = [f for f in matches if f < event.first_frame]
        after = [f for f in matches if f > event.last_frame]
        event.id_before = matches[max(before)] if before else None
        event.id_after = matches[min(after)] if after else None


def evaluate_sequences(pairs: list[tuple[str, np.ndarray, np.ndarray, float]], min_visibility: float = 0.05,
                       iou_threshold: float = 0.5) -> TrackingScores:
    """Scores over sequences given as (name, gt rows, output rows, frames per second)."""
    accumulators, names, events = [], [], []
    for name, gt, hypotheses, fps in pairs:
        accumulator = accumulate(gt, hypotheses, min_visibility, iou_threshold)
        sequence_events = occlusion_events(gt[gt[:, 6] != 0], fps, min_visibility)
        _resolve_events(sequence_events, accumulator)
        accumulators.append(accumulator)
        names.append(name)
        events += sequence_events
    host = mm.metrics.create()
    summary = host.compute_many(accumulators, metrics=list(MOTMETRICS), names=names, generate_overall=True)
    overall = summary.loc['OVERALL'] if len(names) > 1 else summary.iloc[0]
    return TrackingScores({key: float(overall[key]) for key in MOTMETRICS}, events)


def read_frame_rate(sequence_dir: Path, default: float = 30.0) -> float:
    """Read frameRate from a MOTChallenge seqinfo.ini (default when there is none)."""
    info = sequence_dir / 'seqinfo.ini'
    if info.is_file():
        for line in info.read_text().splitlines():
            key, _, value = line.partition('=')
            if key.strip() == 'frameRate':
                return float(value)
    return default


def load_pair(gt_path: Path, results_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(gt rows, output rows) from two MOTChallenge files; names a missing one."""
    for what, path in (('ground truth', gt_path), ('results', results_path)):
        if not path.is_file():
            raise FileNotFoundError(f'{what} file {path} does not exist')
    return read_mot(gt_path), read_mot(results_path)
