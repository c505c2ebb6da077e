"""Evaluation outputs: one JSON, one markdown report and PNG curves (matplotlib, Agg) per run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _plain(value):
    """Numpy scalars/arrays and tuples -> JSON types; NaN -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(path: str | Path, data: dict) -> Path:
    """Write `data` (numpy values allowed) as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2) + '\n')
    return path


def fmt(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    """A metric as the paper prints it (percent, 2 decimals); 'n/a' for None or COCO's -1."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or value < 0)):
        return 'n/a'
    return f'{scale * value:.{digits}f}'


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_markdown(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write a markdown report: a title and (heading, body) sections."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = [f'# {title}', '']
    for heading, body in sections:
        text += [f'## {heading}', '', body.rstrip(), '']
    path.write_text('\n'.join(text))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, figure, axis, path: str | Path) -> Path:
    """Add the legend (when there are curves), write the figure as a PNG at `path` and close it."""
    if axis.lines:
        axis.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_precision_recall(path: str | Path, curves: dict[str, dict[str, list[float]]],
                          recall_points: list[float], title: str) -> Path:
    """Precision-recall curves (COCOeval's interpolated precision); -1 (undefined) points are left out.

    Args:
        path: PNG to write.
        curves: legend label -> {threshold label -> [R] precision}.
        recall_points: [R] recall values.
        title: plot title.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    recall = np.asarray(recall_points)
    for label, by_threshold in curves.items():
        for threshold, precision in by_threshold.items():
            precision = np.asarray(precision, dtype=float)
            defined = precision >= 0
            if defined.any():
                axis.plot(recall[defined], precision[defined], label=f'{label} @ {threshold}')
    axis.set(xlabel='recall', ylabel='precision', xlim=(0, 1), ylim=(0, 1.02), title=title)
    axis.grid(alpha=0.3)
    return _finish(plt, figure, axis, path)


def plot_miss_rate(path: str | Path, curves: dict[str, tuple[list[float], list[float], float | None]],
                   title: str = 'CityPersons miss rate vs FPPI') -> Path:
    """MR-FPPI curves on log-log axes, one per setup, MR^-2 in the legend.

    Args:
        path: PNG to write.
        curves: setup name -> (fppi [D], miss rate [D], MR^-2 or None).
        title: plot title.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name, (fppi, miss, mr2) in curves.items():
        fppi, miss = np.asarray(fppi, dtype=float), np.asarray(miss, dtype=float)
        if len(fppi):
            # points before the first false positive (FPPI 0) are drawn at the axis' left edge
            axis.step(np.maximum(fppi, 1e-3), np.maximum(miss, 1e-4), where='post',
                      label=f'{name} (MR-2 {fmt(mr2)}%)')
    axis.set(xscale='log', yscale='log', xlabel='false positives per image', ylabel='miss rate',
             xlim=(1e-3, 1e1), ylim=(1e-2, 1.05), title=title)
    axis.axvspan(1e-2, 1e0, color='grey', alpha=0.08)
    axis.grid(alpha=0.3, which='both')
    return _finish(plt, figure, axis, path)
