"""A study's reports: `results.json` (one row per run, with its accuracy history),
`results.md` (mean ± std over seeds) and a plot (`noise.png` or `imbalance.png`).

Noise studies: per noise kind, tables head x noise level of the peak test accuracy, the
final one, the drop (peak - final), the step of the peak, the memorised fraction (flipped
training records predicted as their given, wrong label) and the training accuracy on the given
labels; a plot of peak and final accuracy against the noise level; and a summary that answers,
computed from the rows, whether any GReFEL setting shrinks the drop beyond the seed spread.
Imbalance studies: one table per final metric, and the peak / final mean class accuracy.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from grefel_jax.study.runner import METRICS, PREDICTIONS

# Noise tables: (row key, title, format) of the quantities per head x level.
NOISE_QUANTITIES = (
    ("peak_accuracy", "peak test accuracy", "{:.3f}"),
    ("final_accuracy", "final test accuracy (last step)", "{:.3f}"),
    ("drop_accuracy", "drop = peak - final (memorisation)", "{:.3f}"),
    ("peak_step", "step of the peak", "{:.0f}"),
    ("memorised_fraction", "memorised fraction of the flipped training records", "{:.3f}"),
    ("train_accuracy_given", "training accuracy on the given (noisy) labels", "{:.3f}"),
)


def _level(row: dict, kind: str) -> str:
    """The column a row belongs to: its noise level, or its imbalance ratio."""
    if kind == "noise":
        if row.get("label_file"):
            return f"file {Path(row['label_file']).name}"
        return f"{round(row['noise'] * 100)}%"
    return f"ratio {row['imbalance_ratio']:g}"


def _noise_kinds(row: dict) -> tuple[str, ...]:
    """The noise kinds a row reports under: its own, or every kind for a clean run."""
    if row.get("label_file"):
        return ("label files",)
    kind = row.get("kind", "symmetric") if row["noise"] > 0 else ""
    return (kind,) if kind else ("symmetric", "pairs")


def _predictions(head: str) -> tuple[str, ...]:
    """The predictions reported for a head: the poster head has only p."""
    return ("primary",) if head == "poster" else PREDICTIONS


def reported_prediction(head: str) -> str:
    """The prediction a head is judged by: p for poster, q_corr for the GReFEL / ARBEx heads."""
    return "primary" if head == "poster" else "corrected"


def _value(row: dict, prediction: str, quantity: str) -> float:
    if quantity in ("memorised_fraction", "train_accuracy_given"):
        value = row.get(f"train/{prediction}/{quantity}")
        return float("nan") if value is None else float(value)
    return float(row[f"{prediction}/{quantity}"])


def _stats(values) -> tuple[float, float, int]:
    """(mean, sample std (NaN for one value), n) over the finite values."""
    values = np.array([v for v in values if np.isfinite(v)], np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), 0
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return float(values.mean()), std, len(values)


def _cell(stats: tuple[float, float, int], fmt: str = "{:.3f}") -> str:
    mean, std, n = stats
    if n == 0:
        return ""
    spread = "n/a" if np.isnan(std) else fmt.format(std)
    return f"{fmt.format(mean)} ± {spread}"


def noise_table(rows: list[dict]) -> dict:
    """{(noise kind, head, prediction, level): {quantity: (mean, std, n)}} over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        for kind in _noise_kinds(row):
            for prediction in _predictions(row["head"]):
                groups[kind, row["head"], prediction, _level(row, "noise")].append(row)
    return {
        key: {q: _stats(_value(m, key[2], q) for m in members) for q, _, _ in NOISE_QUANTITIES}
        for key, members in groups.items()
    }


def _levels(rows: list[dict], kind: str) -> list[str]:
    def order(row):
        return (bool(row.get("label_file")), row["noise"], row["imbalance_ratio"])

    return list(dict.fromkeys(_level(r, kind) for r in sorted(rows, key=order)))


def drop_verdict(rows: list[dict]) -> dict:
    """Whether any non-poster head shrinks the memorisation drop beyond the seed spread.

    For each noise kind and level > 0, the drop (peak - final test accuracy) of each head's
    reported prediction is compared with the poster head's: it shrinks the drop beyond the
    seed spread when poster's mean drop minus its mean drop exceeds the sum of the two sample
    stds (both over >= 2 seeds). The poster head memorises visibly at a level when its mean
    drop exceeds its own std.

    Returns:
      dict with `memorisation`: [(kind, level, mean, std, visible)], `shrinks`:
      [(kind, level, head, shrink, spread)] of the heads beyond the spread, `compared`: the
      number of (kind, level, head) cells compared.
    """
    table = noise_table(rows)
    memorisation, shrinks, compared = [], [], 0
    for (kind, head, _, level), stats in sorted(table.items()):
        if head != "poster" or level in ("0%",) or level.startswith("file"):
            continue
        mean, std, n = stats["drop_accuracy"]
        memorisation.append((kind, level, mean, std, bool(n > 1 and mean > std)))
        for (k2, other, p2, l2), other_stats in sorted(table.items()):
            if (k2, l2) != (kind, level) or other == "poster" or p2 != reported_prediction(other):
                continue
            o_mean, o_std, o_n = other_stats["drop_accuracy"]
            if n < 2 or o_n < 2:
                continue
            compared += 1
            shrink, spread = mean - o_mean, std + o_std
            if shrink > spread:
                shrinks.append((kind, level, other, shrink, spread))
    return {"memorisation": memorisation, "shrinks": shrinks, "compared": compared}


def best_anchor_count(rows: list[dict]) -> list[tuple[str, str, int, float, bool]]:
    """At the highest noise level of each kind: the K of the paper-ramp GReFEL heads
    (`grefel_k<K>` and `grefel`) with the best mean final corrected accuracy, and whether it
    beats the runner-up by more than the sum of their stds. [(kind, level, K, mean, beyond)]."""

    def paper_ramp(head: str) -> bool:
        return head == "grefel" or (head.startswith("grefel_k") and head[8:].isdigit())

    ramp = [r for r in rows if paper_ramp(r["head"]) and r["noise"] > 0 and not r.get("label_file")]
    out = []
    for kind in dict.fromkeys(r.get("kind", "symmetric") for r in ramp):
        members = [r for r in ramp if r.get("kind", "symmetric") == kind]
        top = max(r["noise"] for r in members)
        by_k: dict[int, list[float]] = defaultdict(list)
        for r in members:
            if r["noise"] == top:
                by_k[int(r["num_anchors"])].append(r["corrected/final_accuracy"])
        if len(by_k) < 2:
            continue
        ranked = sorted(((_stats(v), k) for k, v in by_k.items()), key=lambda x: -x[0][0])
        (best, k), (second, _) = ranked[0], ranked[1]
        beyond = bool(best[2] > 1 and second[2] > 1 and best[0] - second[0] > best[1] + second[1])
        out.append((kind, f"{round(top * 100)}%", k, best[0], beyond))
    return out


def summary_lines(rows: list[dict]) -> list[str]:
    """The computed answers of a noise study (the report's last lines)."""
    verdict = drop_verdict(rows)
    lines = []
    for kind, level, mean, std, visible in verdict["memorisation"]:
        spread = "n/a" if np.isnan(std) else f"{std:.3f}"
        lines.append(
            f"poster memorisation at {kind} {level}: drop {mean:.3f} ± {spread} "
            f"({'beyond' if visible else 'not beyond'} its seed spread)"
        )
    if verdict["compared"] == 0:
        lines.append("drop shrunk by a GReFEL setting beyond the seed spread: not measurable ")
        lines[-1] += "(fewer than 2 seeds, or no noisy level with both poster and a GReFEL head)"
    elif verdict["shrinks"]:
        found = "; ".join(
            f"{head} at {kind} {level} (by {shrink:.3f} > spread {spread:.3f})"
            for kind, level, head, shrink, spread in verdict["shrinks"]
        )
        lines.append(f"drop shrunk by a GReFEL setting beyond the seed spread: YES: {found}")
    else:
        lines.append(
            "drop shrunk by a GReFEL setting beyond the seed spread: NO "
            f"(none of {verdict['compared']} head x level cells)"
        )
    for kind, level, k, mean, beyond in best_anchor_count(rows):
        lines.append(
            f"best K of the paper ramp at {kind} {level}: K = {k} (final corrected {mean:.3f}; "
            f"{'beyond' if beyond else 'within'} the seed spread of the runner-up)"
        )
    return lines


def _regime(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    steps = sorted({r["steps"] for r in rows})
    records = sorted({str(r.get("train_records") or "all") for r in rows})
    inits = sorted({repr(r.get("init_from", "")) for r in rows})
    every = sorted({r.get("eval_every") for r in rows if r.get("eval_every")})
    return (
        f"{len(rows)} runs; seeds {seeds}; steps {steps}; training records {records}; "
        f"init_from {', '.join(inits)}; clean `{rows[0]['split']}` split "
        f"({rows[0]['num_examples']} examples) evaluated every {every} steps and at the last. "
        "Cells: mean ± sample std over seeds (n/a with one seed)."
    )


def noise_markdown(rows: list[dict], title: str) -> str:
    """results.md of a noise study: per kind, one table per NOISE_QUANTITIES entry."""
    table = noise_table(rows)
    levels = _levels(rows, "noise")
    kinds = list(dict.fromkeys(k for r in rows for k in _noise_kinds(r) if r["noise"] > 0))
    kinds = kinds or ["symmetric"]
    series = list(dict.fromkeys((r["head"], p) for r in rows for p in _predictions(r["head"])))
    lines = [f"# {title}", "", _regime(rows), "", "## Summary", ""]
    lines += [f"- {line}" for line in summary_lines(rows)] + [""]
    for kind in kinds:
        for quantity, what, fmt in NOISE_QUANTITIES:
            lines += [f"## {kind} noise: {what}", "", f"| head | {' | '.join(levels)} |"]
            lines += ["|---" * (len(levels) + 1) + "|"]
            for head, prediction in series:
                cells = [
                    _cell(table[kind, head, prediction, lv][quantity], fmt)
                    if (kind, head, prediction, lv) in table
                    else ""
                    for lv in levels
                ]
                if any(cells):
                    lines.append(f"| {head} ({prediction}) | {' | '.join(cells)} |")
            lines.append("")
    return "\n".join(lines)


def imbalance_markdown(rows: list[dict], title: str) -> str:
    """results.md of an imbalance study: final metrics, then peak / final mean class acc."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[f"{row['head']} / {row['balancing'] or 'config'}", _level(row, "imbalance")].append(
            row
        )
    series = list(dict.fromkeys(s for s, _ in groups))
    levels = _levels(rows, "imbalance")
    lines = [f"# {title}", "", _regime(rows), ""]
    names = [f"{p}/{m}" for p in PREDICTIONS for m in METRICS]
    names += [f"{p}/{q}_mean_class_accuracy" for p in PREDICTIONS for q in ("peak", "final")]
    for name in names:
        lines += [f"## {name}", "", f"| | {' | '.join(levels)} |"]
        lines += ["|---" * (len(levels) + 1) + "|"]
        for s in series:
            cells = [
                _cell(_stats(float(m.get(name, "nan")) for m in groups[s, lv]))
                if (s, lv) in groups
                else ""
                for lv in levels
            ]
            lines.append(f"| {s} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def plot_noise(rows: list[dict], path: Path) -> None:
    """Peak (solid) and final (dashed) test accuracy against the noise level, one panel per
    kind, one colour per head (its reported prediction), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = noise_table(rows)
    levels = [lv for lv in _levels(rows, "noise") if not lv.startswith("file")]
    kinds = list(dict.fromkeys(k for r in rows for k in _noise_kinds(r) if r["noise"] > 0))
    kinds = kinds or ["symmetric"]
    heads = list(dict.fromkeys(r["head"] for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes[0], kinds):
        for number, head in enumerate(heads):
            prediction = reported_prediction(head)
            colour = colours[number % len(colours)]
            for quantity, style in (("peak_accuracy", "-"), ("final_accuracy", "--")):
                points = [
                    (i, *table[kind, head, prediction, lv][quantity][:2])
                    for i, lv in enumerate(levels)
                    if (kind, head, prediction, lv) in table
                ]
                if not points:
                    continue
                xs, means, stds = map(np.array, zip(*points))
                jitter = (number - (len(heads) - 1) / 2) * 0.04
                ax.errorbar(
                    xs + jitter,
                    means,
                    yerr=np.nan_to_num(stds),
                    linestyle=style,
                    marker="o" if style == "-" else "s",
                    color=colour,
                    capsize=3,
                    label=f"{head} ({prediction}) {quantity.split('_')[0]}",
                )
        ax.set_xticks(np.arange(len(levels)), levels)
        ax.set_title(f"{kind} label noise: peak (solid) and final (dashed)")
        ax.set_xlabel("training label noise")
        ax.set_ylabel("test accuracy (clean labels)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_imbalance(rows: list[dict], path: Path) -> None:
    """Final mean class accuracy per imbalance ratio, one line per head / remedy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = _levels(rows, "imbalance")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    series = list(dict.fromkeys(f"{r['head']} / {r['balancing'] or 'config'}" for r in rows))
    for ax, prediction in zip(axes, PREDICTIONS):
        name = f"{prediction}/mean_class_accuracy"
        for offset, s in enumerate(series):
            points = []
            for i, lv in enumerate(levels):
                members = [
                    r[name]
                    for r in rows
                    if f"{r['head']} / {r['balancing'] or 'config'}" == s
                    and _level(r, "imbalance") == lv
                ]
                if members:
                    points.append((i, *_stats(members)[:2]))
            if not points:
                continue
            xs, means, stds = map(np.array, zip(*points))
            jitter = (offset - (len(series) - 1) / 2) * 0.04
            ax.errorbar(
                xs + jitter, means, yerr=np.nan_to_num(stds), marker="o", capsize=3, label=s
            )
        ax.set_xticks(np.arange(len(levels)), levels)
        ax.set_title(f"{prediction} prediction, last step")
        ax.set_xlabel("imbalance")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean class accuracy (clean test)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(rows: list[dict], kind: str, workdir: Path) -> list[Path]:
    """Writes results.json, results.md and the plot; returns their paths."""
    workdir = Path(workdir)
    paths = [workdir / "results.json", workdir / "results.md", workdir / f"{kind}.png"]
    paths[0].write_text(json.dumps(rows, indent=1))
    if kind == "noise":
        paths[1].write_text(noise_markdown(rows, "Label noise x head"))
        plot_noise(rows, paths[2])
    else:
        paths[1].write_text(imbalance_markdown(rows, "Class imbalance x remedy x head"))
        plot_imbalance(rows, paths[2])
    return paths
