"""MOTChallenge text files: one line per box, `frame,id,bb_left,bb_top,bb_width,bb_height,conf,x,y,z`.

frame is 1-based; the box is in pixels (left, top, width, height); x, y, z are -1 (2-D tracking). Ground
truth files (gt/gt.txt) use conf = 1 for boxes that count, then class and visibility columns instead of
x, y, z: `frame,id,left,top,width,height,1,1,visibility` (class 1 = pedestrian, visibility in [0, 1]).
This is the layout `motmetrics.io.loadtxt(fmt='mot15-2D')` and TrackEval's MOT reader read.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def mot_line(frame: int, track_id: int, box_xyxy, score: float) -> str:
    """One result line: 1-based frame, track id, box x1, y1, x2, y2 (pixels) written as left, top, w, h."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return f'{frame},{track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f},-1,-1,-1'


def gt_line(frame: int, track_id: int, box_xyxy, visibility: float) -> str:
    """One ground-truth line (MOT16+ layout): conf 1, class 1 (pedestrian), visibility in [0, 1]."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return f'{frame},{track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,1,{visibility:.3f}'


def write_lines(path: str | Path, lines: Iterable[str]) -> Path:
    """Write lines (newline-terminated) to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = '\n'.join(lines)
    path.write_text(text + '\n' if text else '')
    return path


def read_mot(path: str | Path) -> np.ndarray:
    """A MOTChallenge file as float64 [N, >= 7] rows (frame, id, left, top, width, height, conf, ...).

    Raises:
        ValueError: a line does not have at least 7 numeric, comma-separated fields (names file and line).
    """
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split(',')]
        except ValueError:
            raise ValueError(f'{path}:{number}: not comma-separated numbers: {line!r}') from None
        if len(values) < 7:
            raise ValueError(f'{path}:{number}: {len(values)} fields, MOTChallenge lines have at least 7')
        rows.append(values[:10] + [-1.0] * (10 - len(values[:10])))
    return np.array(rows, np.float64).reshape(-1, 10)
