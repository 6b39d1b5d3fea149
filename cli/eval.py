"""``api-prompt eval DATA --benchmark NAME --target SPEC --out DIR``: does attention prompting help?

Asks the target on every sample with the original image and with the attention-prompted image,
scores both as the benchmark's official evaluation does, and writes ``DIR/predictions.jsonl``,
``DIR/summary.json`` (metrics per condition, the paired difference with its bootstrap interval
and McNemar p-value), ``DIR/report.md`` and ``DIR/chart.png``. A stopped run continues when the
same command is run again.

Example::

    api-prompt eval POPE.tsv --benchmark pope --target openai:gpt-4o-mini --out runs/pope
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from .ask import (
    BaseUrlOpt,
    MaxNewTokensOpt,
    TargetDeviceOpt,
    TargetDtypeOpt,
    TargetOpt,
    TargetOptionOpt,
    TimeoutOpt,
    target_options,
)
from .common import DebugOpt, InputFormat, QuietOpt, handle_errors, registry_help, status
from .options import PromptOptions, prompt_options

_DATA = "Data"
_RUN = "Run"
_JUDGE = "Judge (mmvet, llava-bench)"


def parse_benchmark(name: str) -> str:
    """``--benchmark``'s value checked against the benchmark registry at parse time (a benchmark
    registered after this module was imported is accepted too)."""
    from api_prompt.evaluation.benchmarks import BENCHMARKS

    name = str(name).strip()
    if name not in BENCHMARKS:
        raise typer.BadParameter(
            f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}"
        )
    return name


def _benchmarks_help() -> str:
    from api_prompt.evaluation.benchmarks import BENCHMARKS

    scored = ", ".join(
        record.help or name for name, record in BENCHMARKS.items() if record.judge is None
    )
    judged = ", ".join(
        record.help or name for name, record in BENCHMARKS.items() if record.judge is not None
    )
    return f"How answers are scored: {scored}" + (
        f", or by a judge model (--judge): {judged}." if judged else "."
    )


@prompt_options()
def eval_command(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            show_default=False,
            help="Benchmark data: a VLMEvalKit TSV, JSON Lines, CSV, parquet (file or folder) or a "
            "saved Hugging Face dataset folder (the lmms-eval layout).",
        ),
    ],
    benchmark: Annotated[
        str,
        typer.Option(
            "--benchmark",
            parser=parse_benchmark,
            metavar="NAME",
            show_default=False,
            help=registry_help("--benchmark", _benchmarks_help),
        ),
    ],
    target: TargetOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            show_default=False,
            help="Output folder: predictions.jsonl, summary.json, report.md, chart.png. An earlier run "
            "with the same parameters is continued.",
        ),
    ],
    conditions: Annotated[
        str,
        typer.Option(
            "--conditions",
            rich_help_panel=_RUN,
            help="Comma-separated: original (the image as it is), api (the attention-prompted image), "
            "or prompt styles by name (overlay, crop, blur, box), each drawn from the same map; every two "
            "conditions are compared in the report.",
        ),
    ] = "original,api",
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            rich_help_panel=_RUN,
            show_default=False,
            help="Only the first N samples.",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", "-b", min=1, rich_help_panel=_RUN, help="Samples per model call."
        ),
    ] = 16,
    resamples: Annotated[
        int,
        typer.Option(
            "--resamples", min=100, rich_help_panel=_RUN, help="Paired bootstrap resamples."
        ),
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=_RUN, help="Bootstrap seed.")] = 0,
    bare_question: Annotated[
        bool,
        typer.Option(
            "--bare-question",
            rich_help_panel=_RUN,
            help="Ask the target the question exactly as the data has it, without the benchmark's "
            "answer-format instruction (recorded in summary.json's settings).",
        ),
    ] = False,
    retry_errors: Annotated[
        bool,
        typer.Option(
            "--retry-errors",
            rich_help_panel=_RUN,
            help="Ask again for samples whose target call failed in an earlier run.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            rich_help_panel=_RUN,
            help="Discard an earlier evaluation's outputs in --out instead of continuing it.",
        ),
    ] = False,
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column",
            rich_help_panel=_DATA,
            show_default="question_id, else id (index for TSV), else the row number",
            help="Column with each sample's unique id.",
        ),
    ] = None,
    image_column: Annotated[
        str | None,
        typer.Option(
            "--image-column",
            rich_help_panel=_DATA,
            show_default="image",
            help="Column with the image (path, base64, bytes or a datasets image).",
        ),
    ] = None,
    question_column: Annotated[
        str | None,
        typer.Option(
            "--question-column",
            rich_help_panel=_DATA,
            show_default="question",
            help="Column with the question.",
        ),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            rich_help_panel=_DATA,
            show_default="the folder holding DATA",
            help="Folder that relative image paths are read from.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            rich_help_panel=_DATA,
            show_default=False,
            help="Split of a saved dataset with several.",
        ),
    ] = None,
    input_format: Annotated[
        InputFormat | None,
        typer.Option(
            "--input-format",
            rich_help_panel=_DATA,
            show_default="from the extension",
            help="Format of DATA.",
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge",
            rich_help_panel=_JUDGE,
            show_default=False,
            help="The judge model of mmvet and llava-bench: openai:MODEL on any OpenAI-compatible "
            "endpoint (lmms-eval's default is openai:gpt-4o-2024-11-20).",
        ),
    ] = None,
    judge_base_url: Annotated[
        str | None,
        typer.Option(
            "--judge-base-url",
            rich_help_panel=_JUDGE,
            show_default="OPENAI_BASE_URL, else OpenAI's",
            help="The judge's API root, up to /v1.",
        ),
    ] = None,
    judge_api_key: Annotated[
        str | None,
        typer.Option(
            "--judge-api-key",
            rich_help_panel=_JUDGE,
            show_default="$API_PROMPT_JUDGE_KEY, else $OPENAI_API_KEY",
            help="The judge's API key.",
        ),
    ] = None,
    judge_repeats: Annotated[
        int,
        typer.Option(
            "--judge-repeats",
            min=1,
            rich_help_panel=_JUDGE,
            help="Grade every answer N times to report the judge's run-to-run variation.",
        ),
    ] = 1,
    judge_concurrency: Annotated[
        int,
        typer.Option(
            "--judge-concurrency",
            min=1,
            rich_help_panel=_JUDGE,
            help="Judge requests in flight at once.",
        ),
    ] = 8,
    base_url: BaseUrlOpt = None,
    max_new_tokens: MaxNewTokensOpt = 64,
    target_device: TargetDeviceOpt = None,
    target_dtype: TargetDtypeOpt = None,
    timeout: TimeoutOpt = 60.0,
    target_option: TargetOptionOpt = None,
    *,
    options: PromptOptions,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score a target on a benchmark with and without attention prompting, with paired statistics.

    Example:  api-prompt eval POPE.tsv --benchmark pope --target openai:gpt-4o-mini --out runs/pope
    """
    from api_prompt.evaluation.judge import create_judge
    from api_prompt.evaluation.runner import check_conditions, check_data, check_judge, evaluate
    from api_prompt.targets import create_target, get_target, split_target_spec

    with handle_errors(debug):
        # 1. Everything cheap first, so a typo never costs a model load.
        chosen = check_conditions(conditions)
        grader = None
        if judge is not None:
            grader = create_judge(
                judge,
                base_url=judge_base_url,
                api_key=judge_api_key,
                timeout=timeout,
                max_concurrency=judge_concurrency,
            )
        check_judge(benchmark, grader, judge_repeats)
        kind, target_model = split_target_spec(target)
        get_target(kind).check_name(
            target_model
        )  # a missing local model now, not after the data is read
        answerer_options = target_options(
            target,
            target_option,
            defaults={"timeout": timeout, "device": options.device},
            base_url=base_url,
            device=target_device,
            dtype=target_dtype,
        )
        styles = tuple(condition for condition in chosen if condition not in ("original", "api"))
        prompted = any(condition != "original" for condition in chosen)
        if prompted:
            options.check(also_styles=styles)
        data_options = dict(
            id_column=id_column,
            image_column=image_column,
            question_column=question_column,
            image_root=image_root,
            split=split,
            format=input_format.value if input_format else None,
        )
        checked = check_data(data, benchmark, limit=limit, **data_options)
        if prompted:
            options.check_device()

        # 2. The models.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with status(f"Loading target {target}", quiet=quiet):
                answerer = create_target(target, **answerer_options)
            prompter = (
                options.build(quiet=quiet, batch_size=batch_size, also_styles=styles)
                if prompted
                else None
            )
            summary = evaluate(
                data,
                benchmark,
                answerer,
                out,
                conditions=chosen,
                prompter=prompter,
                limit=limit,
                batch_size=batch_size,
                generation={"max_new_tokens": max_new_tokens},
                n_resamples=resamples,
                seed=seed,
                retry_errors=retry_errors,
                overwrite=overwrite,
                progress=None if quiet else _progress(),
                target_name=target,
                checked=checked,
                judge=grader,
                judge_repeats=judge_repeats,
                bare_question=bare_question,
                **data_options,
            )
    if not quiet:
        typer.echo(_headline(summary, out))


def _progress():
    from rich.console import Console

    console = Console(stderr=True)

    def show(done: int, total: int) -> None:
        if console.is_terminal:
            console.print(f"\r{done}/{total} samples", end="", highlight=False)
        elif done == total or done % 100 < 16:
            console.print(f"{done}/{total} samples", highlight=False)

    return show


def _headline(summary: dict, out: Path) -> str:
    """One line per metric of the delta (or of the single condition), and where the report is."""
    lines = []
    conditions = list(summary["conditions"])
    if summary["delta"]:
        base = conditions[0]
        other = "api" if "api" in conditions else conditions[1]
        for name, delta in list(summary["delta"].items())[:8]:
            before = summary["conditions"][base]["metrics"].get(name)
            after = summary["conditions"][other]["metrics"].get(name)
            if delta["value"] is None or before is None or after is None:
                continue
            lo, hi = delta["ci95"]
            p = "" if delta["p_value"] is None else f", p={delta['p_value']:.3g}"
            lines.append(
                f"{name}: {base} {before:.4f} -> {other} {after:.4f} "
                f"(delta {delta['value']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]{p})"
            )
    else:
        for condition, data in summary["conditions"].items():
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in list(data["metrics"].items())[:6] if v is not None
            )
            lines.append(f"{condition}: {shown}")
    judge = summary.get("judge")
    if judge:
        lines.append(
            f"judge: {judge['judge_model']}, {judge['calls']} calls, {judge['total_tokens']} tokens"
        )
    lines.append(f"report: {out / 'report.md'}")
    return "\n".join(lines)
