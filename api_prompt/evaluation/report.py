"""The outputs of an evaluation run: ``summary.json``'s content, ``report.md`` and the chart.

:func:`summarize` is pure (answers in, a JSON-able dict out); the writers only lay it out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .benchmarks import BENCHMARKS, build_table
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_conditions, mcnemar_p

__all__ = ["summarize", "write_report", "write_chart", "chart_metrics"]


def summarize(
    benchmark: str,
    samples: Sequence[Mapping[str, Any]],
    answers: Mapping[str, Sequence[str | None]],
    errors: Mapping[str, Sequence[str | None]],
    *,
    target: Any = None,
    settings: Any = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    baseline: str = "original",
    judge: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary of a run: metrics per condition and the paired difference from ``baseline``.

    ``answers[c][i]`` / ``errors[c][i]`` are condition ``c``'s answer and error (or None) for
    ``samples[i]``. A sample with an error in any condition is left out of every condition's
    metrics, so the conditions are always compared on the same samples. For the judge-scored
    benchmarks (``mmvet``, ``llava-bench``) ``answers`` holds the judge's grades, and ``judge``
    (the judge, its cost and run-to-run variation) is stored as the summary's ``judge`` entry.

    >>> samples = [{"answer": "yes"}, {"answer": "no"}, {"answer": "no"}]
    >>> summary = summarize("pope", samples, {"original": ["yes", "yes", "no"], "api": ["yes", "no", None]},
    ...                     {"original": [None] * 3, "api": [None, None, "timeout"]})
    >>> summary["conditions"]["api"]["n"], summary["conditions"]["api"]["errors"]
    (2, 1)
    >>> summary["delta"]["accuracy"]["value"]
    0.5
    """
    conditions = list(answers)
    if any(len(errors[c]) < len(samples) for c in conditions):
        raise ValueError(
            f"every condition needs an error entry (or None) for each of the {len(samples)} samples"
        )
    per_sample = zip(*(errors[c] for c in conditions))
    keep = [i for i, row in enumerate(per_sample) if row.count(None) == len(row)]
    kept = [samples[i] for i in keep]
    table = build_table(benchmark, kept, {c: [answers[c][i] for i in keep] for c in conditions})
    base = baseline if baseline in conditions else conditions[0]
    boot = (
        bootstrap_conditions(
            table.units, table.metric, baseline=base, n_resamples=n_resamples, seed=seed
        )
        if kept
        else None
    )
    summary: dict[str, Any] = {
        "benchmark": benchmark,
        "target": target,
        "settings": settings,
        "conditions": {},
        "delta": {},
        "statistics": {
            "samples": len(samples),
            "scored": len(kept),
            "excluded": len(samples) - len(kept),
            "bootstrap_resamples": n_resamples,
            "seed": seed,
            "baseline": base,
            "p_value": "exact McNemar test on the paired 0/1 outcomes (null for other metrics)",
        },
    }
    for condition in conditions:
        metrics = table.point(condition) if kept else {}
        intervals = boot["intervals"][condition] if boot else {}
        summary["conditions"][condition] = {
            "n": len(kept),
            "errors": len(errors[condition]) - list(errors[condition]).count(None),
            "metrics": {name: _number(value) for name, value in metrics.items()},
            "ci95": {name: [_number(lo), _number(hi)] for name, (lo, hi) in intervals.items()},
        }
    if judge is not None:
        summary["judge"] = dict(judge)
    others = [c for c in conditions if c != base]
    if boot and others:
        # ``delta`` is api − original when both ran, else the first other condition's
        other = "api" if "api" in others else others[0]
        if (base, other) in boot["pairs"]:
            summary["delta"] = _differences(boot["pairs"][(base, other)], table, base, other)
        else:
            summary["delta"] = _differences(
                boot["pairs"][(other, base)], table, base, other, sign=-1
            )
        if len(conditions) > 2:
            summary["comparisons"] = {
                f"{b} - {a}": _differences(boot["pairs"][(a, b)], table, a, b)
                for (a, b) in boot["pairs"]
            }
    return summary


def _differences(pair_deltas, table, a: str, b: str, sign: int = 1) -> dict[str, Any]:
    """``{metric: {value, ci95, p_value}}`` of b − a (``sign`` −1: the pair was computed as a − b)."""
    out = {}
    for name, (value, (lo, hi)) in pair_deltas.items():
        if sign < 0:
            value, lo, hi = -value, -hi, -lo
        outcomes = table.binary.get(name)
        p_value = mcnemar_p(outcomes[a], outcomes[b]) if outcomes is not None else None
        out[name] = {
            "value": _number(value),
            "ci95": [_number(lo), _number(hi)],
            "p_value": p_value,
        }
    return out


def _number(value: float) -> float | None:
    """JSON has no NaN: undefined metrics (say, precision with no "yes") become null."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def chart_metrics(benchmark: str, metrics: Mapping[str, Any]) -> list[str]:
    """The metrics the chart shows: per category when there are categories, else all (MME's
    totals, on another scale, are left to the report)."""
    record = BENCHMARKS.get(benchmark)  # a summary may name a benchmark not registered here
    primary = record.primary if record is not None else "accuracy"
    per_category = [name for name in metrics if name.endswith("/" + primary)]
    if per_category:
        return ([primary] if primary in metrics else []) + per_category
    return [name for name in metrics if name not in ("perception", "cognition")]


def _format(value: Any, digits: int = 4) -> str:
    return (
        "n/a"
        if value is None
        else f"{value:.{digits}g}"
        if abs(value) >= 10
        else f"{value:.{digits}f}"
    )


def write_report(summary: Mapping[str, Any], path: Path, *, chart: str | None = None) -> None:
    """``report.md``: one table row per metric, both conditions, the difference, its interval
    and its p-value."""
    conditions = list(summary["conditions"])
    stats = summary["statistics"]
    lines = [
        f"# {summary['benchmark']}: does attention prompting help?",
        "",
        f"- target: `{_describe(summary.get('target'))}`",
        f"- samples: {stats['samples']} ({stats['scored']} scored in every condition, "
        f"{stats['excluded']} left out because a target or judge call failed)",
        "- errors: " + ", ".join(f"{c} {summary['conditions'][c]['errors']}" for c in conditions),
        *_judge_lines(summary.get("judge")),
        f"- intervals: paired bootstrap, {stats['bootstrap_resamples']} resamples, seed {stats['seed']}; "
        "p: exact McNemar (0/1 outcomes only)",
        "",
    ]
    header = ["metric"] + conditions
    if summary["delta"]:
        header += ["delta", "95% CI", "p"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    names = list(next(iter(summary["conditions"].values()))["metrics"]) if conditions else []
    for name in names:
        row = [name] + [_format(summary["conditions"][c]["metrics"].get(name)) for c in conditions]
        delta = summary["delta"].get(name)
        if summary["delta"]:
            if delta:
                lo, hi = delta["ci95"]
                p = delta["p_value"]
                row += [
                    f"{delta['value']:+.4f}" if delta["value"] is not None else "n/a",
                    f"[{_format(lo)}, {_format(hi)}]",
                    "" if p is None else f"{p:.3g}",
                ]
            else:
                row += ["", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    if summary.get("comparisons"):
        lines += [
            "",
            "Every two conditions (b − a, same samples):",
            "",
            "| b − a | metric | delta | 95% CI | p |",
            "|---|---|---|---|---|",
        ]
        shown = [n for n in names if "/" not in n][:3]  # the headline metrics, not each category
        for pair, per_metric in summary["comparisons"].items():
            for name in shown:
                delta = per_metric.get(name)
                if delta and delta["value"] is not None:
                    lo, hi = delta["ci95"]
                    p = "" if delta["p_value"] is None else f"{delta['p_value']:.3g}"
                    lines.append(
                        f"| {pair} | {name} | {delta['value']:+.4f} | [{_format(lo)}, {_format(hi)}] | {p} |"
                    )
    if chart:
        lines += ["", f"![{summary['benchmark']} per condition]({chart})"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_chart(summary: Mapping[str, Any], path: Path) -> bool:
    """A bar chart of the metrics per condition with their 95% intervals (False: nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    conditions = list(summary["conditions"])
    first = summary["conditions"][conditions[0]]["metrics"] if conditions else {}
    names = chart_metrics(summary["benchmark"], first)
    if not names:
        return False
    x = np.arange(len(names))
    width = 0.8 / len(conditions)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(names) * len(conditions) + 1.5), 3.6))
    colours = {
        "original": "#9aa5b1",
        "api": "#d9480f",
        "overlay": "#d9480f",
        "crop": "#1971c2",
        "blur": "#2f9e44",
        "box": "#ae3ec9",
    }
    for position, condition in enumerate(conditions):
        data = summary["conditions"][condition]
        values = np.array(
            [np.nan if data["metrics"].get(n) is None else data["metrics"][n] for n in names]
        )
        bounds = np.array([data["ci95"].get(n, [None, None]) for n in names], dtype=float)
        errors = np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values]))
        axes.bar(
            x + (position - (len(conditions) - 1) / 2) * width,
            values,
            width,
            yerr=np.nan_to_num(errors),
            capsize=3,
            label=condition,
            color=colours.get(condition, None),
        )
    axes.set_xticks(x, [n.replace("/", "\n") for n in names], fontsize=8)
    axes.set_ylabel("score (95% CI)")
    axes.set_title(
        f"{summary['benchmark']}: {summary['statistics']['scored']} samples", fontsize=10
    )
    axes.legend(fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _judge_lines(judge: Mapping[str, Any] | None) -> list[str]:
    """The judge, what it cost, and (with repeats) the spread of the primary metrics."""
    if not judge:
        return []
    lines = [
        f"- judge: `{judge.get('judge_model')}` at {judge.get('base_url')}, {judge['calls']} calls, "
        f"{judge['prompt_tokens']} prompt + {judge['completion_tokens']} completion tokens"
    ]
    variation = judge.get("variation")
    if variation:
        for key, metrics in variation["spread"].items():
            shown = ", ".join(
                f"{name} sd {_format(v['std'])}" for name, v in list(metrics.items())[:4]
            )
            lines.append(f"- judge run-to-run ({variation['repeats']} runs), {key}: {shown}")
    return lines


def _describe(target: Any) -> str:
    if isinstance(target, Mapping):
        return target.get("spec") or target.get("target") or str(dict(target))
    return str(target)
