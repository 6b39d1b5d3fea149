"""Write the prompted data back whole, in an output format of :mod:`.formats`, for the tool that
evaluates it: a VLMEvalKit TSV for a TSV input (``tsv``), a ``datasets`` folder (``dataset``) or
Hub-layout parquet shards (``parquet``) for parquet and ``datasets`` inputs, or any registered
format that is asked for.

Nothing is lost silently: the output is written only when every sample of the input (up to
``limit``) is done. With ``allow_partial`` it is written anyway: failed rows keep their
original image and the column ``api_prompt_status`` says ``ok`` or why the row failed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from .formats import (
    STATUS_COLUMN,
    ExportJob,
    ExportOptions,
    ExportRow,
    default_output_format,
    get_output_format,
)
from .selection import Share, named_samples
from .sources import Source
from .store import OutputDir, plain_file_name

__all__ = [
    "export",
    "planned_outputs",
    "check_export_options",
    "default_tsv_name",
    "run_tag",
    "STATUS_COLUMN",
    "ExportSummary",
]


class ExportSummary(Protocol):
    """What :func:`export` fills in (a batch run's or a merge's summary)."""

    failed_total: int
    exported: Path | None
    tsv: Path | None
    dataset: Path | None
    partial: bool
    not_exported: str | None


def default_tsv_name(input_name: str) -> str:
    """``<stem>_API.tsv``: a new dataset name, so VLMEvalKit neither re-downloads an official
    table over it (its checksum differs) nor mixes it up with the original.

    >>> default_tsv_name("MMBench_DEV_EN.tsv")
    'MMBench_DEV_EN_API.tsv'
    """
    return f"{Path(input_name).stem}_API.tsv"


def check_export_options(*, tsv_name: str | None, output_format: str | None) -> None:
    """Refuse a TSV name with a folder in it or another extension, and unknown output formats."""
    if tsv_name is not None and (
        plain_file_name(tsv_name) is None
        or not tsv_name.endswith(".tsv")
        or tsv_name.startswith(".")
    ):
        raise ConfigError(
            f"--tsv-name must be a file name ending in .tsv (no folder), got {tsv_name!r}"
        )
    if output_format is not None:
        get_output_format(output_format)


def planned_outputs(
    source: Source, *, num_shards: int, tsv_name: str | None, output_format: str | None
) -> dict[str, str]:
    """What a run writes besides images and the manifest (for run.json's ``outputs``): the
    asked-for format when it can write the input, else the input's default format (if any).

    Shards write none (``merge`` does, once all shards are together).
    """
    if num_shards != 1:
        return {}
    name = output_format
    if name is None or not get_output_format(name).accepts(source.format):
        # the format named for another kind of input (``--output-format`` applies to the
        # inputs its format writes): the input's own default, as before formats were a registry
        name = default_output_format(source.format)
    if name is None:
        return {}
    spec = get_output_format(name)
    return {spec.name: spec.file_name(source, ExportOptions(tsv_name=tsv_name))}


def run_tag(parameters: dict[str, Any]) -> str:
    """8 hex digits that identify a run's parameters (source, output, prompter).

    >>> run_tag({"a": 1}) == run_tag({"a": 1}) != run_tag({"a": 2})
    True
    """
    text = json.dumps(parameters, sort_keys=True, default=str)
    return "api" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def export(
    out: OutputDir,
    source: Source,
    run_info: dict[str, Any],
    summary: ExportSummary,
    *,
    allow_partial: bool = False,
    keep_original: bool = False,
) -> None:
    """Write the output that ``run_info["outputs"]`` plans, if the run is complete.

    Fills ``summary.failed_total``, ``.exported`` (and ``.tsv`` / ``.dataset`` by the format's
    kind), ``.partial`` and ``.not_exported``.
    """
    info = run_info["run"]
    share = Share(info.get("limit"), info.get("num_shards", 1), info.get("shard_index", 0))
    records = out.records()
    rows = []  # whether each is done is looked up once (a stat per image)
    for sample, name in named_samples(source, share.limit):
        record = records.get(name)
        rows.append(ExportRow(sample, name, record, out.is_done(record)))
    summary.failed_total = sum(
        1 for row in rows if share.contains(row.sample.index) and not row.done
    )
    outputs = run_info.get("outputs") or {}
    planned = [
        (key, name) for key, name in outputs.items() if key not in ("manifest", "images") and name
    ]
    if not planned:
        return
    key, name = planned[0]
    spec = get_output_format(key)
    missing = (
        summary.failed_total
    )  # exports are planned for a whole input only (one shard): share == rows
    if missing and not allow_partial:
        what = spec.what
        summary.not_exported = (
            f"the {what} was not written: {missing} of {len(rows)} samples are not done, and a "
            f"partial {what} would be evaluated as if it were complete; fix them and rerun, or pass "
            f"--allow-partial to keep their original images and mark them in a {STATUS_COLUMN} column"
        )
        out.remove_exports({"outputs": outputs})
        return
    summary.partial = bool(missing)
    job = ExportJob(
        out,
        source,
        rows,
        name,
        run_tag(run_info["parameters"]),
        ExportOptions(keep_original=keep_original, allow_partial=allow_partial),
    )
    path = spec.load()(job)
    summary.exported = path
    if spec.kind == "tsv":
        summary.tsv = path
    elif spec.kind == "dataset":
        summary.dataset = path
