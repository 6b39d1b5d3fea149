"""The ``dataset`` and ``parquet`` output formats: parquet or ``datasets`` in, the same rows out.

``dataset``: ``DIR/dataset``, a ``DatasetDict`` (``save_to_disk``) under the input's split name,
every column of the input (lists included), the prompted image in the image column as a
``datasets.Image`` (a list of them for several images), optionally the original in
``<column>_original``. ``parquet``: the same as parquet shards laid out as on the Hub
(``DIR/data/<split>-00000-of-00001.parquet``). Failed rows (``allow_partial``) keep their
original image.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
from datasets.arrow_writer import ArrowWriter

from ..errors import ConfigError
from ..runs import TMP_SUFFIX
from .formats import STATUS_COLUMN, ExportJob, original_bytes, row_status
from .sources import Sample, TableSource, is_multi_image
from .store import record_files

__all__ = ["write_dataset", "write_parquet", "PARQUET_SHARD_BYTES"]

#: target size of one parquet shard (``--output-format parquet``)
PARQUET_SHARD_BYTES = 500 * 2**20


def write_dataset(job: ExportJob) -> Path:
    """The ``dataset`` format: the prompted ``DatasetDict`` (``save_to_disk``) in ``DIR/<name>``."""
    return _write(job, parquet=False)


def write_parquet(job: ExportJob) -> Path:
    """The ``parquet`` format: the same rows as Hub-layout parquet shards in ``DIR/<name>``."""
    return _write(job, parquet=True)


def _write(job: ExportJob, *, parquet: bool) -> Path:
    source, out, rows = job.source, job.out, job.rows
    status, keep_original = job.options.allow_partial, job.options.keep_original
    if not isinstance(source, TableSource):
        raise ConfigError(
            f"the dataset output needs a parquet or datasets input, not {source.format}"
        )

    image_column = source.image_column
    features = source.features().copy()
    multi = isinstance(features[image_column], (list, datasets.List, datasets.Sequence)) or any(
        is_multi_image(row.sample) for row in rows
    )
    image_feature = datasets.List(datasets.Image()) if multi else datasets.Image()
    original_feature = features[image_column]
    features[image_column] = image_feature
    original_column = f"{image_column}_original"
    if keep_original:
        if original_column in features:
            raise ConfigError(
                f"the input already has a column {original_column!r}; --keep-original cannot add it"
            )
        features[original_column] = original_feature
    if status:
        features[STATUS_COLUMN] = datasets.Value("string")

    work = out.root / f".export{TMP_SUFFIX}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bars_were_on = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()  # our own progress is enough in a log
    try:
        arrow_path = work / "rows.arrow"
        position = 0
        with ArrowWriter(features=features, path=str(arrow_path)) as writer:
            for table in source.tables():
                batch = table.to_pydict()
                count = table.num_rows
                chunk = rows[position : position + count]
                position += count
                prompted, states = [], []
                for row, original in zip(chunk, batch[image_column]):
                    if row.done and row.record is not None:
                        images = [
                            {"bytes": (out.root / file).read_bytes(), "path": Path(file).name}
                            for file in record_files(row.record)
                        ]
                        prompted.append(images if multi else images[0])
                    else:
                        prompted.append(_as_image_value(source, row.sample, original, multi))
                    states.append(row_status(row))
                if len(chunk) < count:  # rows beyond --limit
                    batch = {key: values[: len(chunk)] for key, values in batch.items()}
                if keep_original:
                    batch[original_column] = batch[image_column]
                batch[image_column] = prompted
                if status:
                    batch[STATUS_COLUMN] = states
                if chunk:
                    writer.write_batch(batch)
                if position >= len(rows):
                    break
            writer.finalize()
        dataset = datasets.Dataset.from_file(str(arrow_path))
        staged = work / "out"
        if parquet:
            staged.mkdir()
            shards = max(1, math.ceil(dataset.data.nbytes / PARQUET_SHARD_BYTES))
            for index in range(shards):
                shard = dataset.shard(shards, index, contiguous=True)
                shard.to_parquet(
                    str(staged / f"{source.split}-{index:05d}-of-{shards:05d}.parquet")
                )
        else:
            datasets.DatasetDict({source.split: dataset}).save_to_disk(str(staged))
        del dataset
        target = job.target
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        return target
    finally:
        if bars_were_on:
            datasets.utils.logging.enable_progress_bar()
        shutil.rmtree(work, ignore_errors=True)


def _as_image_value(source: TableSource, sample: Sample, original: Any, multi: bool) -> Any:
    """A failed row's original image as ``datasets.Image`` stores it (bytes kept inline)."""

    def one(value: Any) -> Any:
        if isinstance(value, dict) and value.get("bytes"):
            return {"bytes": value["bytes"], "path": value.get("path")}
        data = original_bytes(source, sample, value)
        if data is None:  # the image itself is what failed: nothing to keep
            return None
        return {"bytes": data, "path": None}

    if multi:
        values = original if isinstance(original, list) else [original]
        return [one(value) for value in values]
    return one(original)
