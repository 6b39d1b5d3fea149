"""``api-prompt batch`` (prompt a whole dataset) and ``api-prompt merge`` (combine shard folders).

Both are thin wrappers of :func:`api_prompt.batch.run` and :func:`api_prompt.batch.merge`.
Exit codes: 0 when every sample is done, 1 when some samples failed (they are listed in the
manifest; rerun the same command to retry them) or shards are missing, 2 for bad options or
input (one line on stderr).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .common import (
    DEFAULT_BACKEND,
    BackendOpt,
    BackendOptionOpt,
    BackgroundOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    EnhanceOpt,
    Geometry,
    GeometryOpt,
    KernelOpt,
    LayerOpt,
    ModelOpt,
    OneLineErrorCommand,
    PresetOpt,
    PretrainedOpt,
    PromptOptions,
    QuietOpt,
    ResampleOpt,
    handle_errors,
)

_INPUT = "Input"
_OUTPUT = "Output"
_RUN = "Run"


class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"


class InputFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"
    hf = "hf"


@app.command("batch", cls=OneLineErrorCommand)
def batch_command(
    input: Annotated[Path, typer.Argument(
        metavar="INPUT", show_default=False,
        help="JSONL, CSV, VLMEvalKit TSV (.tsv), parquet file or folder, or a folder saved by "
        "datasets' save_to_disk.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", rich_help_panel=_OUTPUT, show_default=False,
        help="Output folder: images/, manifest.jsonl, run.json (and <INPUT>.tsv for a TSV). "
        "Rerunning into it resumes.")],
    image_format: Annotated[ImageFormat, typer.Option(
        "--format", rich_help_panel=_OUTPUT, help="png (lossless) or jpg.")] = ImageFormat.png,
    jpeg_quality: Annotated[int, typer.Option(
        "--jpeg-quality", min=1, max=100, rich_help_panel=_OUTPUT, help="JPEG quality for --format jpg.")] = 95,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", rich_help_panel=_OUTPUT,
        help="Delete an earlier run's outputs in --out first (needed when the parameters changed).")] = False,
    image_root: Annotated[Optional[Path], typer.Option(
        "--image-root", rich_help_panel=_INPUT, show_default="the folder holding INPUT",
        help="Folder that relative image paths start from.")] = None,
    id_column: Annotated[Optional[str], typer.Option(
        "--id-column", rich_help_panel=_INPUT, show_default="id; index for TSV; the row number if absent",
        help="Column with the sample id (names the output file).")] = None,
    image_column: Annotated[Optional[str], typer.Option(
        "--image-column", rich_help_panel=_INPUT, show_default="image",
        help="Column with the image: a path, base64, a data: URL, or a datasets Image.")] = None,
    question_column: Annotated[Optional[str], typer.Option(
        "--question-column", rich_help_panel=_INPUT, show_default="question",
        help="Column with the question (the query of the map).")] = None,
    split: Annotated[Optional[str], typer.Option(
        "--split", rich_help_panel=_INPUT, show_default=False,
        help="Split of a saved DatasetDict.")] = None,
    input_format: Annotated[Optional[InputFormat], typer.Option(
        "--input-format", rich_help_panel=_INPUT, show_default="from the extension",
        help="Read INPUT as this format.")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", min=1, rich_help_panel=_RUN, help="Samples per model call.")] = 16,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, rich_help_panel=_RUN, show_default="CPU count, at most 8",
        help="Threads that decode, overlay and encode images while the model runs.")] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=0, rich_help_panel=_RUN, show_default=False,
        help="Only the first N samples of INPUT.")] = None,
    num_shards: Annotated[int, typer.Option(
        "--num-shards", min=1, rich_help_panel=_RUN,
        help="Split the work into this many shards (sample i goes to shard i % N); run each "
        "shard into its own --out, then 'api-prompt merge'.")] = 1,
    shard_index: Annotated[int, typer.Option(
        "--shard-index", min=0, rich_help_panel=_RUN, help="Which shard this run does (0-based).")] = 0,
    preset: PresetOpt = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    backend_option: BackendOptionOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    layer: LayerOpt = None,
    enhance: EnhanceOpt = None,
    kernel_size: KernelOpt = None,
    resample: ResampleOpt = None,
    background: BackgroundOpt = None,
    geometry: GeometryOpt = Geometry.stretch,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Prompt every sample of a dataset: images, a manifest and run.json in --out (resumable).

    Example:  api-prompt batch questions.jsonl --out prompted/ --batch-size 32
    """
    from api_prompt.batch import OutputDir, open_source, run
    from api_prompt.errors import ConfigError

    with handle_errors(debug):
        # Everything cheap first, so a typo never costs a model load.
        if shard_index >= num_shards:
            raise ConfigError(f"--shard-index must be below --num-shards ({num_shards}), got {shard_index}")
        options = PromptOptions(
            backend=backend, model=model, pretrained=pretrained, layer=layer, device=device,
            dtype=dtype, preset=preset, enhance=enhance, kernel_size=kernel_size,
            resample=resample, background=background, geometry=geometry,
            backend_options=tuple(backend_option or ()),
        )
        options.check()
        source = open_source(
            input, format=input_format.value if input_format else None, id_column=id_column,
            image_column=image_column, question_column=question_column, image_root=image_root,
            split=split,
        )
        OutputDir(out).check_usable()

        # the model's own chunking follows --batch-size
        prompter = options.build(quiet=quiet, batch_size=batch_size)
        summary = run(
            source, out, prompter, batch_size=batch_size, workers=workers, limit=limit,
            num_shards=num_shards, shard_index=shard_index, overwrite=overwrite,
            image_format=image_format.value, jpeg_quality=jpeg_quality, progress=not quiet,
        )

    if not quiet:
        typer.echo(str(summary), err=True)
        if summary.tsv is not None:
            typer.echo(f"VLMEvalKit table: {summary.tsv}", err=True)
    if summary.failed:
        shown = "; ".join(
            " ".join(f"{sample_id}: {message}".split()) for sample_id, message in summary.errors[:3]
        )
        typer.echo(
            f"error: {summary.error} samples failed (see {out / 'manifest.jsonl'}; rerun to retry "
            f"them): {shown}", err=True,
        )
        raise typer.Exit(1)


@app.command("merge", cls=OneLineErrorCommand)
def merge_command(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="DIR...", show_default=False, help="Output folders of batch runs (e.g. its shards).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", show_default=False,
        help="The merged folder (new, empty, or an earlier merge of the same run).")],
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Delete what --out holds from an earlier run first.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Combine the output folders of sharded batch runs into one (images, manifest, TSV).

    Example:  api-prompt merge part0 part1 part2 --out all
    """
    from api_prompt.batch import merge

    with handle_errors(debug):
        summary = merge(run_dirs, out, overwrite=overwrite)
    if not quiet:
        typer.echo(str(summary), err=True)
    if not summary.complete:
        problems = []
        if summary.missing_shards:
            problems.append(f"shards {', '.join(map(str, summary.missing_shards))} are missing")
        if summary.error:
            problems.append(f"{summary.error} samples failed (see {out / 'manifest.jsonl'})")
        typer.echo(f"error: {'; '.join(problems)}", err=True)
        raise typer.Exit(1)
