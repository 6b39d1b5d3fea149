"""The ``tsv`` output format: a VLMEvalKit TSV in, ``DIR/<stem>_API.tsv`` out.

Every column as the input had it, ``image`` holding the prompted image (base64; a list for rows
with several images) and an ``image_path`` per row that no other run or original can have
(``<name>_<tag>.<ext>``, the tag a hash of the run's parameters). VLMEvalKit saves each row's
image under ``$LMUData/images/<dataset>/<image_path>`` and reuses a file already there, so a
name of its own per row and per run is what keeps it from serving an original (or another
run's) image. A failed row (``allow_partial``) keeps its original image, named ``..._original_<tag>``.
"""

from __future__ import annotations

import base64
import csv
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..images import is_jpeg
from ..runs import TMP_SUFFIX
from .formats import STATUS_COLUMN, ExportJob, original_bytes, row_status
from .sources import CSVSource, Sample, Source, is_multi_image
from .store import part_names, record_files

__all__ = ["write_tsv"]


def write_tsv(job: ExportJob) -> Path:
    """Write ``DIR/<name>`` (see the module docs); returns its path."""
    source, out, tag = job.source, job.out, job.tag
    status = job.options.allow_partial
    if not isinstance(source, CSVSource):
        raise ConfigError(f"the TSV output needs a TSV input, not {source.format}")
    columns = list(source.columns or [])
    image_column = source.image_column
    if "image" not in columns:
        columns.insert(columns.index(image_column), "image")
    if "image_path" not in columns:
        columns.insert(columns.index("image") + 1, "image_path")
    if status and STATUS_COLUMN not in columns:
        columns.append(STATUS_COLUMN)
    path = job.target
    temporary = path.with_name(f".{path.name}{TMP_SUFFIX}")
    raw_rows = source.rows()
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row, raw in zip(job.rows, raw_rows):
            sample, stem = row.sample, row.name
            values: dict[str, Any] = dict(raw)
            if row.done and row.record is not None:
                files = record_files(row.record)
                images = [
                    base64.b64encode((out.root / file).read_bytes()).decode("ascii")
                    for file in files
                ]
                names = [f"{Path(file).stem}_{tag}{Path(file).suffix}" for file in files]
            else:
                images, names = _original_images(source, sample, stem, tag)
            multi = is_multi_image(sample)
            if images:
                values["image"] = repr(images) if multi else images[0]
                values["image_path"] = repr(names) if multi else names[0]
            else:  # unreadable: the cell exactly as the input had it
                values["image"] = raw.get("image", raw.get(image_column, ""))
                values["image_path"] = f"{stem}_original_{tag}.jpg"
            if status:
                values[STATUS_COLUMN] = row_status(row)
            writer.writerow(
                ["" if values.get(column) is None else values[column] for column in columns]
            )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def _original_images(
    source: Source, sample: Sample, stem: str, tag: str
) -> tuple[list[str], list[str]]:
    """The original image(s) of a failed row as base64, with names of their own ("original")."""
    multi = is_multi_image(sample)
    values = sample.image if multi else [sample.image]
    images, names = [], []
    for part, value in zip(part_names(stem, len(values)) if multi else [stem], values):
        data = original_bytes(source, sample, value)
        if data is None:  # the image itself is what failed: nothing to keep
            return [], []
        images.append(base64.b64encode(data).decode("ascii"))
        names.append(f"{part}_original_{tag}.{'jpg' if is_jpeg(data) else 'png'}")
    return images, names
