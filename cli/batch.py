"""``api-prompt batch`` (prompt a whole dataset) and ``api-prompt merge`` (combine shard folders).

Long because: ``batch`` and ``merge`` declare many options (input columns, formats, sharding,
engines), each with the help text users read; the logic is in :mod:`api_prompt.batch`.

Both are thin wrappers of :func:`api_prompt.batch.run` and :func:`api_prompt.batch.merge`.
Exit codes: 0 when every sample is done, 1 when some samples failed (they are listed in the
manifest, with whether a rerun can fix them) or shards are missing, 2 for bad options or input
(one line on stderr), 130 when interrupted (what finished is kept; rerun to resume).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from api_prompt.images import DEFAULT_MAX_PIXELS

from .common import (
    DebugOpt,
    InputFormat,
    MaxPixelsOpt,
    QuietOpt,
    _command_options,
    for_command_line,
    handle_errors,
    plural,
    registry_help,
)
from .options import PromptOptions, prompt_options

_INPUT = "Input"
_OUTPUT = "Output"
_RUN = "Run"


class ImageFormat(str, Enum):
    auto = "auto"
    png = "png"
    jpg = "jpg"


def parse_output_format(name: str) -> str:
    """``--output-format``'s value checked against the output format registry at parse time (so a
    format registered after this module was imported is accepted too)."""
    from api_prompt.batch.formats import OUTPUT_FORMATS

    key = str(name).strip()
    if key not in OUTPUT_FORMATS:
        raise typer.BadParameter(
            f"unknown output format {name!r}; choose one of: {', '.join(OUTPUT_FORMATS)}"
        )
    return key


def _output_formats_help() -> str:
    from api_prompt.batch.formats import OUTPUT_FORMATS

    described = "; ".join(f"{spec.name}: {spec.help}" for spec in OUTPUT_FORMATS.values())
    return f"The prompted data written back whole, for the inputs a format writes ({described})."


class Engine(str, Enum):
    local = "local"
    ray = "ray"


@prompt_options()
def batch_command(
    input: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            show_default=False,
            help="JSONL, CSV, VLMEvalKit TSV (.tsv), parquet file or folder, or a folder saved by "
            "datasets' save_to_disk.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            rich_help_panel=_OUTPUT,
            show_default=False,
            help="Output folder: images/, manifest.jsonl, run.json, and <stem>_API.tsv for a TSV or "
            "dataset/ for parquet and datasets inputs. Rerunning into it resumes.",
        ),
    ],
    image_format: Annotated[
        ImageFormat,
        typer.Option(
            "--format",
            rich_help_panel=_OUTPUT,
            help="auto: JPEG where the input image is a JPEG, else PNG; png (lossless); jpg.",
        ),
    ] = ImageFormat.auto,
    jpeg_quality: Annotated[
        int,
        typer.Option(
            "--jpeg-quality",
            min=1,
            max=100,
            rich_help_panel=_OUTPUT,
            help="JPEG quality (recorded in run.json).",
        ),
    ] = 95,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            rich_help_panel=_OUTPUT,
            help="Write the TSV / dataset even if some samples failed: their rows keep the original "
            "image and an api_prompt_status column marks them. Without it nothing partial is written.",
        ),
    ] = False,
    tsv_name: Annotated[
        str | None,
        typer.Option(
            "--tsv-name",
            rich_help_panel=_OUTPUT,
            show_default="<stem>_API.tsv",
            help="File name of the prompted VLMEvalKit TSV (its dataset name in VLMEvalKit).",
        ),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--output-format",
            parser=parse_output_format,
            metavar="NAME",
            rich_help_panel=_OUTPUT,
            show_default="tsv for a TSV, dataset for parquet and datasets inputs, none for JSONL and CSV",
            help=registry_help("--output-format", _output_formats_help),
        ),
    ] = None,
    keep_original: Annotated[
        bool,
        typer.Option(
            "--keep-original",
            rich_help_panel=_OUTPUT,
            help="Keep the original image in a <image column>_original column of the dataset.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            rich_help_panel=_OUTPUT,
            help="Delete an earlier run's outputs in --out first (needed when the parameters changed).",
        ),
    ] = False,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            rich_help_panel=_INPUT,
            show_default="the folder holding INPUT",
            help="Folder that relative image paths start from.",
        ),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column",
            rich_help_panel=_INPUT,
            show_default="id; index for TSV; the row number if absent",
            help="Column with the sample id (names the output file).",
        ),
    ] = None,
    image_column: Annotated[
        str | None,
        typer.Option(
            "--image-column",
            rich_help_panel=_INPUT,
            show_default="image",
            help="Column with the image: a path, base64, a data: URL, or a datasets Image.",
        ),
    ] = None,
    question_column: Annotated[
        str | None,
        typer.Option(
            "--question-column",
            rich_help_panel=_INPUT,
            show_default="question",
            help="Column with the question (the query of the map).",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            rich_help_panel=_INPUT,
            show_default=False,
            help="Split of a saved DatasetDict.",
        ),
    ] = None,
    input_format: Annotated[
        InputFormat | None,
        typer.Option(
            "--input-format",
            rich_help_panel=_INPUT,
            show_default="from the extension",
            help="Read INPUT as this format.",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", "-b", min=1, rich_help_panel=_RUN, help="Samples per model call."
        ),
    ] = 16,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            rich_help_panel=_RUN,
            show_default="one per CPU core, at most 32",
            help="Threads that decode, overlay and encode images while the model runs (as many "
            "again write the files).",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=0,
            rich_help_panel=_RUN,
            show_default=False,
            help="Only the first N samples of INPUT.",
        ),
    ] = None,
    num_shards: Annotated[
        int,
        typer.Option(
            "--num-shards",
            min=1,
            rich_help_panel=_RUN,
            help="Split the work into this many shards (sample i goes to shard i % N); run each "
            "shard into its own --out, then 'api-prompt merge'.",
        ),
    ] = 1,
    shard_index: Annotated[
        int,
        typer.Option(
            "--shard-index",
            min=0,
            rich_help_panel=_RUN,
            help="Which shard this run does (0-based).",
        ),
    ] = 0,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            rich_help_panel=_RUN,
            help="local: threads in this process; ray: Ray Data actors, one model each, on every GPU "
            "(or CPU) of a Ray cluster (pip install 'api-prompt\\[ray]').",
        ),
    ] = Engine.local,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            rich_help_panel=_RUN,
            show_default="a local Ray instance",
            help="Ray cluster to join with --engine ray (e.g. auto, or HEAD_IP:6379 after 'ray start').",
        ),
    ] = None,
    num_gpus: Annotated[
        float | None,
        typer.Option(
            "--num-gpus",
            min=0,
            rich_help_panel=_RUN,
            show_default="1 if the cluster has GPUs, else 0",
            help="GPUs per Ray actor (--engine ray); one actor per GPU by default.",
        ),
    ] = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    *,
    options: PromptOptions,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Prompt every sample of a dataset: images, a manifest and run.json in --out (resumable).

    Example:  api-prompt batch questions.jsonl --out prompted/ --batch-size 32
    """
    import functools

    from api_prompt.batch import Interrupted, LazyPrompter, OutputDir, open_source, run
    from api_prompt.errors import ConfigError

    def say(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)

    with handle_errors(debug):
        # Everything cheap first, so a typo never costs a model load.
        if shard_index >= num_shards:
            raise ConfigError(
                f"--shard-index must be below --num-shards ({num_shards}), got {shard_index}"
            )
        if address is not None and engine is not Engine.ray:
            raise ConfigError("--address needs --engine ray")
        if engine is Engine.ray and num_shards != 1:
            raise ConfigError("--engine ray spreads the work itself; leave out --num-shards")
        options.check()
        if engine is Engine.ray:
            from api_prompt.batch.ray_engine import require_ray

            require_ray()
        source = open_source(
            input,
            format=input_format.value if input_format else None,
            id_column=id_column,
            image_column=image_column,
            question_column=question_column,
            image_root=image_root,
            split=split,
        )
        OutputDir(out).check_usable()
        if not overwrite:
            check_rerun(
                out, source, options, image_format=image_format.value, jpeg_quality=jpeg_quality
            )
        if engine is not Engine.ray:  # the actors check their own device where they run
            options.check_device()

        # Loaded only when some sample is left to do; the model's own chunking follows --batch-size.
        # the options added with prompt styles count only when set, so a folder written before
        # them is still recognised as done without loading the model
        unset = {"recipe": None, "style": "overlay", "style_options": ()}
        request = {
            key: getattr(value, "value", value)
            for key, value in vars(options).items()
            if key not in unset or value != unset[key]
        }
        prompter = LazyPrompter(
            functools.partial(options.build, quiet=quiet, batch_size=batch_size), request
        )
        try:
            summary = run(
                source,
                out,
                prompter,
                batch_size=batch_size,
                workers=workers,
                limit=limit,
                num_shards=num_shards,
                shard_index=shard_index,
                overwrite=overwrite,
                image_format=image_format.value,
                jpeg_quality=jpeg_quality,
                allow_partial=allow_partial,
                tsv_name=tsv_name,
                output_format=output_format,
                keep_original=keep_original,
                engine=engine.value,
                address=address,
                num_gpus=num_gpus,
                progress=not quiet,
                log=say,
                max_pixels=max_pixels,
            )
        except Interrupted as stop:
            total = stop.total if stop.total is not None else "?"
            typer.echo(
                f"interrupted: {stop.done} of {total} done; rerun the same command to resume",
                err=True,
            )
            raise typer.Exit(130) from None

    say(str(summary))
    if summary.tsv is not None:
        say(
            f"VLMEvalKit table: {summary.tsv}"
            + (" (partial: see its api_prompt_status column)" if summary.partial else "")
        )
        say(vlmevalkit_next_steps(summary.tsv))
    if summary.dataset is not None:
        say(
            f"prompted dataset: {summary.dataset}"
            + (" (partial: see its api_prompt_status column)" if summary.partial else "")
        )
        say(dataset_next_steps(summary.dataset, source))
    if summary.failed:
        typer.echo(failure_message(summary, out), err=True)
        raise typer.Exit(1)


def check_rerun(
    out: Path, source, options: PromptOptions, *, image_format: str, jpeg_quality: int
) -> None:
    """Refuse, before any model loads, a rerun into ``out`` whose parameters differ from the
    earlier run's: the input and its columns, the output format, and the map and overlay
    settings (what run.json records and can be known without the model). The runner checks the
    rest (the backend, the model and its weights) once the model is loaded.
    """
    from api_prompt.batch.runner import OutputSpec
    from api_prompt.batch.store import OutputDir, compare_parameters, jsonable
    from api_prompt.errors import ConfigError
    from api_prompt.presets import check_settings

    stored = OutputDir(out).read_run()
    if stored is None:
        return
    recorded = stored.get("parameters") or {}
    settings = options.settings()
    resolved, _ = check_settings(settings.pop("preset"), **settings)
    # the backend's name in run.json is what its attributor describes itself as, known once it
    # loads (a registered backend may name itself otherwise): the runner checks it with the model
    prompter = {**resolved, "geometry": settings["geometry"]}
    requested = jsonable(
        {
            "source": source.describe(),
            "output": OutputSpec(
                "jpg" if image_format == "jpeg" else image_format, jpeg_quality
            ).describe(),
            "prompter": {
                key: value
                for key, value in prompter.items()
                if key in (recorded.get("prompter") or {})
            },
        }
    )
    earlier = {
        "source": recorded.get("source"),
        "output": recorded.get("output"),
        "prompter": {
            key: (recorded.get("prompter") or {}).get(key) for key in requested["prompter"]
        },
    }
    changes = compare_parameters(earlier, requested)
    if changes:
        shown = "; ".join(changes[:4]) + (
            f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
        )
        raise ConfigError(
            f"--out {out} holds a run with different parameters ({shown}); use a new --out folder, "
            "or --overwrite to discard the earlier outputs"
        )


def failure_message(summary, out: Path) -> str:
    """One ``error:`` line: how many failed, which kind, what to do, and the first few."""
    parts = []
    if summary.error:
        kinds = []
        if summary.permanent:
            kinds.append(
                f"{summary.permanent} with bad input that a rerun cannot fix (fix the input, then rerun)"
            )
        if summary.transient:
            kinds.append(
                f"{summary.transient} that a rerun may fix (rerun the same command to retry them)"
            )
        parts.append(f"{plural(summary.error, 'sample')} failed: {'; '.join(kinds)}")
    elif summary.failed_total:
        parts.append(
            f"{plural(summary.failed_total, 'sample')} failed in an earlier run (see the manifest; rerun to retry)"
        )
    if summary.not_exported:
        parts.append(summary.not_exported)
    shown = "; ".join(
        " ".join(f"{sample_id}: {message}".split()) for sample_id, message in summary.errors[:3]
    )
    text = f"error: {'; '.join(parts)} (see {out / 'manifest.jsonl'})"
    return for_command_line(f"{text}: {shown}" if shown else text, _command_options())


def vlmevalkit_next_steps(tsv: Path) -> str:
    """How to evaluate the prompted TSV with VLMEvalKit (facts from its ``build_dataset``)."""
    import csv

    with open(tsv, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle, delimiter="\t"), [])
    name = tsv.stem
    if "A" in header and "B" in header:
        evaluator = (
            f"VLMEvalKit treats {name} as a custom multiple-choice dataset (CustomMCQDataset: the "
            "table has A and B columns) and scores it with its multiple-choice evaluation."
        )
    else:
        evaluator = (
            f"VLMEvalKit treats {name} as a custom open-ended dataset (CustomVQADataset: no A/B "
            "columns); it runs the model on it, but that class has no scorer: score the "
            "predictions yourself."
        )
    return (
        "next steps (VLMEvalKit):\n"
        f'  cp {tsv} "${{LMUData:-$HOME/LMUData}}/"\n'
        f"  python run.py --data {name} --model <MODEL>\n"
        f"  {evaluator}"
    )


def dataset_next_steps(folder: Path, source) -> str:
    """How to load the prompted dataset with ``datasets`` and lmms-eval."""
    split = getattr(source, "split", "train")
    if folder.name == "data":
        return (
            "next steps:\n"
            f'  datasets.load_dataset("parquet", data_dir="{folder.resolve()}")\n'
            "  (or upload the folder's parent to the Hugging Face Hub as a dataset repository)"
        )
    return (
        "next steps:\n"
        f'  datasets.load_from_disk("{folder.resolve()}")["{split}"]\n'
        "  lmms-eval task YAML: copy the original task's YAML and set\n"
        f"    dataset_path: {folder.resolve()}\n"
        "    dataset_kwargs: {load_from_disk: true}\n"
        f"    test_split: {split}"
    )


def merge_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="DIR...",
            show_default=False,
            help="Output folders of batch runs (e.g. its shards).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            show_default=False,
            help="The merged folder (new, empty, or an earlier merge of the same run).",
        ),
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete what --out holds from an earlier run first.")
    ] = False,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="Write the TSV / dataset even if samples failed or shards are missing (original images, "
            "api_prompt_status column).",
        ),
    ] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Combine the output folders of sharded batch runs into one (images, manifest, TSV / dataset).

    Example:  api-prompt merge part0 part1 part2 --out all
    """
    from api_prompt.batch import merge

    with handle_errors(debug):
        summary = merge(run_dirs, out, overwrite=overwrite, allow_partial=allow_partial)
    if not quiet:
        typer.echo(str(summary), err=True)
        if summary.tsv is not None:
            typer.echo(f"VLMEvalKit table: {summary.tsv}", err=True)
            typer.echo(vlmevalkit_next_steps(summary.tsv), err=True)
        if summary.dataset is not None:
            typer.echo(f"prompted dataset: {summary.dataset}", err=True)
    if not summary.complete or summary.not_exported:
        problems = []
        if summary.missing_shards:
            missing = summary.missing_shards
            problems.append(
                f"shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                f"{'are' if len(missing) > 1 else 'is'} missing"
            )
        if summary.error:
            problems.append(
                f"{plural(summary.error, 'sample')} failed (see {out / 'manifest.jsonl'})"
            )
        if summary.not_exported:
            problems.append(summary.not_exported)
        typer.echo(f"error: {'; '.join(problems)}", err=True)
        raise typer.Exit(1)
