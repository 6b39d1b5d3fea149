"""Output formats as specs: the prompted data written back whole, one exporter per format.

``api-prompt batch`` (``--output-format`` choices and help), :func:`~api_prompt.batch.run` and
:func:`~api_prompt.batch.merge` read this table; none of them names a format in code. Adding a
format is one module with a writer function plus one :func:`register_output_format` call:

>>> from api_prompt.batch.formats import OutputFormat, register_output_format
>>> register_output_format(OutputFormat(                                  # doctest: +SKIP
...     name="jsonl", writer="my_package.jsonl_export:write", help="JSON Lines with image paths",
...     output_name="{stem}_API.jsonl"))

The writer gets an :class:`ExportJob` (the output folder, the source, one :class:`ExportRow`
per sample, the options) and returns the path it wrote; it writes through a temporary name so a
killed run never leaves half a file under the final name. The writer's module is imported only
when the format is written, so listing the formats costs nothing.

>>> [spec.name for spec in OUTPUT_FORMATS.values()][:3]
['tsv', 'dataset', 'parquet']
>>> default_output_format("tsv"), default_output_format("jsonl")
('tsv', None)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .records import ManifestRecord
from .sources import Sample, Source
from .store import OutputDir

__all__ = [
    "OutputFormat",
    "OUTPUT_FORMATS",
    "register_output_format",
    "get_output_format",
    "default_output_format",
    "output_format_names",
    "ExportRow",
    "ExportJob",
    "ExportOptions",
    "STATUS_COLUMN",
    "row_status",
    "original_bytes",
]

#: the column that marks rows of a partial export
STATUS_COLUMN = "api_prompt_status"


@dataclass(frozen=True)
class ExportOptions:
    """The export options of a run: ``tsv_name`` (the TSV's file name), ``keep_original`` (keep
    the original images in a column), ``allow_partial`` (write even when samples failed; failed
    rows keep their original image and :data:`STATUS_COLUMN` says why)."""

    tsv_name: str | None = None
    keep_original: bool = False
    allow_partial: bool = False


@dataclass(frozen=True)
class ExportRow:
    """One sample of the input as an exporter sees it: the sample, its file name stem, its
    latest manifest record (None when it was never processed) and whether it is done (its
    prompted image(s) are in ``DIR/images``)."""

    sample: Sample
    name: str
    record: ManifestRecord | None
    done: bool


@dataclass(frozen=True)
class ExportJob:
    """What a writer writes: ``rows`` of ``source`` into ``out.root / name``.

    ``tag`` identifies the run's parameters (8 hex digits after ``api``), for names that must
    differ between runs; ``options`` as given to the run.
    """

    out: OutputDir
    source: Source
    rows: list[ExportRow]
    name: str
    tag: str
    options: ExportOptions

    @property
    def target(self) -> Path:
        """Where the output goes."""
        return self.out.root / self.name


Writer = Callable[[ExportJob], Path]


@dataclass(frozen=True)
class OutputFormat:
    """A registry entry: an output format of ``api-prompt batch``.

    Attributes:
        name: what users type (``--output-format NAME``); also its key in run.json's ``outputs``.
        writer: ``"module:function"`` (imported when the format is written) or the function.
        help: one line for ``--output-format``'s help.
        output_name: the file or folder in ``DIR``; ``{stem}`` is the input's name without
            its extension.
        inputs: the input formats (:data:`~api_prompt.batch.sources.FORMATS`) it can write;
            None for any.
        default_for: the input formats it is written for when no format is asked for.
        what: what the output is called in messages ("the TSV was not written").
        kind: ``"tsv"`` fills :attr:`Summary.tsv`, ``"dataset"`` :attr:`Summary.dataset`
            (both also :attr:`Summary.exported`, which every format fills).
        name_option: the :class:`ExportOptions` field that, when set, replaces ``output_name``.
    """

    name: str
    writer: str | Writer
    help: str
    output_name: str
    inputs: tuple[str, ...] | None = None
    default_for: tuple[str, ...] = ()
    what: str = "table"
    kind: Literal["tsv", "dataset", ""] = ""
    name_option: str | None = None

    def accepts(self, input_format: str) -> bool:
        """Whether it can write data read as ``input_format``."""
        return self.inputs is None or input_format in self.inputs

    def file_name(self, source: Source, options: ExportOptions) -> str:
        """The output's name in ``DIR`` for ``source``."""
        chosen = getattr(options, self.name_option) if self.name_option else None
        return chosen or self.output_name.format(stem=Path(source.name).stem)

    def load(self) -> Writer:
        """The writer function."""
        if callable(self.writer):
            return self.writer
        module_name, _, function = self.writer.partition(":")
        try:
            writer: Writer = getattr(importlib.import_module(module_name), function)
            return writer
        except ImportError as exc:
            raise ConfigError(
                f"the {self.name} output format cannot be loaded ({exc}); is its extra installed?"
            ) from exc
        except AttributeError:
            raise ConfigError(
                f"the {self.name} output format's writer {self.writer!r} names no function"
            ) from None


#: output format name -> :class:`OutputFormat`. Add entries with :func:`register_output_format`.
OUTPUT_FORMATS: dict[str, OutputFormat] = {}


def register_output_format(spec: OutputFormat) -> OutputFormat:
    """Add ``spec`` under its name (replacing one of the same name); returns it."""
    if not isinstance(spec, OutputFormat):
        raise TypeError(f"register_output_format takes an OutputFormat, got {type(spec).__name__}")
    OUTPUT_FORMATS[spec.name] = spec
    return spec


def get_output_format(name: str) -> OutputFormat:
    """The spec called ``name``, or a ConfigError that lists the registered ones."""
    try:
        return OUTPUT_FORMATS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown output format {name!r}; choose one of: {', '.join(OUTPUT_FORMATS)}"
        ) from None


def output_format_names() -> list[str]:
    """The registered formats' names, in registration order."""
    return list(OUTPUT_FORMATS)


def default_output_format(input_format: str) -> str | None:
    """The format written for ``input_format`` when none is asked for (None: only the images)."""
    return next(
        (spec.name for spec in OUTPUT_FORMATS.values() if input_format in spec.default_for), None
    )


# ------------------------------------------------------------------------------------------------
# Helpers for writers


def row_status(row: ExportRow) -> str:
    """:data:`STATUS_COLUMN`'s value: ``ok``, or why the row failed.

    >>> row_status(ExportRow(Sample(0, "a", None, "?"), "a", None, False))
    'failed: not processed'
    """
    if row.done:
        return "ok"
    if row.record is None:
        return "failed: not processed"
    return f"failed ({row.record.get('error_kind') or 'error'}): {row.record.get('error') or 'image missing'}"


def original_bytes(source: Source, sample: Sample, value: Any) -> bytes | None:
    """One original image value of ``sample`` as encoded bytes; None when it cannot be read."""
    try:
        data = source.resolve(value, sample)
        data = data if isinstance(data, (bytes, bytearray)) else Path(data).read_bytes()
    except Exception:
        return None
    return bytes(data)


for _spec in (
    OutputFormat(
        name="tsv",
        writer="api_prompt.batch.export_tsv:write_tsv",
        help="VLMEvalKit TSV inputs: the same table with the prompted images (DIR/<stem>_API.tsv)",
        output_name="{stem}_API.tsv",
        inputs=("tsv",),
        default_for=("tsv",),
        what="TSV",
        kind="tsv",
        name_option="tsv_name",
    ),
    OutputFormat(
        name="dataset",
        writer="api_prompt.batch.export_dataset:write_dataset",
        help="parquet and datasets inputs: a DatasetDict saved with save_to_disk (DIR/dataset)",
        output_name="dataset",
        inputs=("parquet", "hf"),
        default_for=("parquet", "hf"),
        what="dataset",
        kind="dataset",
    ),
    OutputFormat(
        name="parquet",
        writer="api_prompt.batch.export_dataset:write_parquet",
        help="parquet and datasets inputs: Hub-layout parquet shards (DIR/data/<split>-*.parquet)",
        output_name="data",
        inputs=("parquet", "hf"),
        what="dataset",
        kind="dataset",
    ),
):
    register_output_format(_spec)
