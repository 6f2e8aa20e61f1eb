"""A study's reports: `results.json` (one row per run), `results.md` (mean and std over seeds,
one table per metric) and a plot (`noise.png` or `imbalance.png`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from grefel_jax.study.runner import METRICS

PREDICTIONS = ("primary", "corrected")


def _level(row: dict, kind: str) -> str:
    """The column a row belongs to: its noise level, or its imbalance ratio."""
    if kind == "noise":
        if row.get("label_file"):
            return f"file {Path(row['label_file']).name}"
        return f"{round(row['noise'] * 100)}%"
    return f"ratio {row['imbalance_ratio']:g}"


def _series(row: dict, kind: str) -> str:
    """The table row (plot line) a run belongs to: its head (and remedy)."""
    return row["head"] if kind == "noise" else f"{row['head']} / {row['balancing'] or 'config'}"


def aggregate(rows: list[dict], kind: str) -> dict:
    """{(series, level): {metric_key: (mean, std, n)}} over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[_series(row, kind), _level(row, kind)].append(row)
    table = {}
    for key, members in groups.items():
        stats = {}
        for prediction in PREDICTIONS:
            for metric in METRICS:
                name = f"{prediction}/{metric}"
                values = np.array([m[name] for m in members], np.float64)
                std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
                stats[name] = (float(values.mean()), std, len(values))
        flips = np.array([m["realised_flip_fraction"] for m in members])
        stats["realised_flip_fraction"] = (float(flips.mean()), float(flips.std()), len(flips))
        table[key] = stats
    return table


def _ordered(rows: list[dict], kind: str) -> tuple[list[str], list[str]]:
    series = list(dict.fromkeys(_series(r, kind) for r in rows))
    levels = list(dict.fromkeys(_level(r, kind) for r in rows))
    return series, levels


def markdown(rows: list[dict], kind: str, title: str) -> str:
    """results.md: one table per metric and prediction, mean ± std (n seeds)."""
    table = aggregate(rows, kind)
    series, levels = _ordered(rows, kind)
    seeds = sorted({r["seed"] for r in rows})
    steps = sorted({r["steps"] for r in rows})
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} runs; seeds {seeds}; steps {steps}; metrics on the clean "
        f"`{rows[0]['split']}` split ({rows[0]['num_examples']} examples) at the last step. "
        "Cells: mean ± std over seeds (sample std; n/a with one seed).",
        "",
    ]
    if kind == "noise":
        header = " | ".join(levels)
        lines += ["Realised label-flip fraction of the training records:", ""]
        lines += [f"| | {header} |", "|---" * (len(levels) + 1) + "|"]
        cells = [
            f"{table[s, lv]['realised_flip_fraction'][0]:.3f}" if (s, lv) in table else ""
            for lv in levels
            for s in series[:1]
        ]
        lines += [f"| all heads | {' | '.join(cells)} |", ""]
    for prediction in PREDICTIONS:
        for metric in METRICS:
            name = f"{prediction}/{metric}"
            lines += [f"## {name}", "", f"| | {' | '.join(levels)} |"]
            lines += ["|---" * (len(levels) + 1) + "|"]
            for s in series:
                cells = []
                for lv in levels:
                    if (s, lv) not in table:
                        cells.append("")
                        continue
                    mean, std, _ = table[s, lv][name]
                    spread = "n/a" if np.isnan(std) else f"{std:.3f}"
                    cells.append(f"{mean:.3f} ± {spread}")
                lines.append(f"| {s} | {' | '.join(cells)} |")
            lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], kind: str, path: Path, metric: str = "accuracy") -> None:
    """Accuracy (noise) or mean class accuracy (imbalance) per level, one line per series,
    error bars = std over seeds; primary and corrected predictions side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = aggregate(rows, kind)
    series, levels = _ordered(rows, kind)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    x = np.arange(len(levels))
    for ax, prediction in zip(axes, PREDICTIONS):
        name = f"{prediction}/{metric}"
        for offset, s in enumerate(series):
            points = [
                (i, *table[s, lv][name][:2]) for i, lv in enumerate(levels) if (s, lv) in table
            ]
            if not points:
                continue
            xs, means, stds = map(np.array, zip(*points))
            jitter = (offset - (len(series) - 1) / 2) * 0.04
            ax.errorbar(
                xs + jitter, means, yerr=np.nan_to_num(stds), marker="o", capsize=3, label=s
            )
        ax.set_xticks(x, levels)
        ax.set_title(f"{prediction} prediction")
        ax.set_xlabel("training label noise" if kind == "noise" else "imbalance")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric.replace('_', ' ')} (clean test)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(rows: list[dict], kind: str, workdir: Path) -> list[Path]:
    """Writes results.json, results.md and the plot; returns their paths."""
    workdir = Path(workdir)
    paths = [workdir / "results.json", workdir / "results.md", workdir / f"{kind}.png"]
    paths[0].write_text(json.dumps(rows, indent=1))
    title = "Label noise x head" if kind == "noise" else "Class imbalance x remedy x head"
    paths[1].write_text(markdown(rows, kind, title))
    plot(rows, kind, paths[2], "accuracy" if kind == "noise" else "mean_class_accuracy")
    return paths
