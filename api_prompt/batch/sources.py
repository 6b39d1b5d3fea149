"""Dataset sources for batch runs: read (id, image, question) samples one at a time.

Long because: five readers and the image-value rules they all share, each short; kept together
so one file says what every input format means.

Every source yields :class:`Sample` objects in a fixed order without decoding any image; the
runner decodes them in worker threads with :meth:`Source.load_image`. Nothing loads a whole
dataset into memory: JSON Lines, CSV and TSV are read row by row, parquet in record batches,
a Hugging Face dataset from its memory-mapped Arrow files.

==============  ============================================  ==============================
format          what INPUT is                                 default columns (id/image/q)
==============  ============================================  ==============================
``jsonl``       ``*.jsonl`` / ``*.ndjson``, one object a line  ``id`` / ``image`` / ``question``
``csv``         ``*.csv`` with a header row                    ``id`` / ``image`` / ``question``
``tsv``         VLMEvalKit-style ``*.tsv`` (base64 images)     ``index`` / ``image`` / ``question``
``parquet``     ``*.parquet``, a folder of them, or a Hub      ``id`` / ``image`` / ``question``
                layout folder (``data/<split>-*.parquet``)
``hf``          a ``datasets`` folder (``save_to_disk``)       ``id`` / ``image`` / ``question``
==============  ============================================  ==============================

Image values may be a path (relative paths are resolved against ``image_root``, by default the
folder holding INPUT, or INPUT itself when it is a folder), a ``data:image/...;base64,`` URL,
plain base64, raw bytes, a PIL image, or a ``{"bytes": ..., "path": ...}`` dict as
``datasets`` stores images. In a VLMEvalKit TSV an image value of at most 64 characters that
names another row's ``index`` refers to that row's image, as VLMEvalKit itself reads it.

An image value may also be a list (several images for one question: a list column of
``datasets``/parquet, or ``"['b64', 'b64']"`` in a VLMEvalKit TSV); the runner prompts each image
with the row's question.

When the id column is missing (and was not asked for explicitly) the row number is the id.
Every other column with a plain value (text, number, bool) is kept in ``Sample.extra``, so it
reaches the manifest and the TSV written back for VLMEvalKit. With ``keep_columns="all"`` (what
evaluation reads with: a benchmark's ground truth can be a list or a dict) every column but the
image is kept, lists and dicts included, as JSON-able values.

>>> import json, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "qa.jsonl").write_text(json.dumps({"id": "q1", "image": "a.png", "question": "Why?"}) + "\\n")
>>> source = open_source(folder / "qa.jsonl")
>>> [(s.index, s.id, s.image, s.question) for s in source]
[(0, 'q1', 'a.png', 'Why?')]
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import json
import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..errors import ConfigError, ImageLoadError
from ..images import DEFAULT_MAX_PIXELS, is_jpeg, load_image

__all__ = [
    "FORMATS",
    "Sample",
    "Source",
    "JSONLSource",
    "CSVSource",
    "TSVSource",
    "TableSource",
    "ParquetSource",
    "HFDatasetSource",
    "open_source",
    "resolve_image",
    "detect_format",
    "plain_value",
    "KEEP_COLUMNS",
]

FORMATS = ("jsonl", "csv", "tsv", "parquet", "hf")

# Base64 fields in VLMEvalKit TSVs are far beyond the csv module's default 128 KiB limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_SCALARS = (str, int, float, bool, type(None))
#: what a source keeps of a row besides id, image and question (:attr:`Source.keep_columns`)
KeepColumns = Literal["plain", "all"]
KEEP_COLUMNS = ("plain", "all")
#: VLMEvalKit treats an image value this short as the ``index`` of the row holding the image.
TSV_REFERENCE_MAX_LEN = 64


@dataclass
class Sample:
    """One row of a source, not yet decoded.

    Attributes:
        index: 0-based position in the source; drives sharding and the manifest's order.
        id: the id as the source spells it (``str``); the row number when there is no id column.
        image: the raw image value (path, base64 text, bytes, dict, PIL image); see
            :func:`resolve_image`.
        question: the text query (``None`` when the row has none).
        extra: the row's other plain columns (kept in the manifest).
        error: a problem found while reading the row (say, a line that is not JSON); such a
            sample is recorded as an error without being decoded.
    """

    index: int
    id: str
    image: Any
    question: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def is_multi_image(sample: Sample) -> bool:
    """Whether the sample's image value is a list (several images for one question)."""
    return isinstance(sample.image, list)


class Source(ABC):
    """A sequence of samples with a format name and the columns it reads.

    ``keep_columns`` says what ``Sample.extra`` keeps: ``"plain"`` (every other column with a
    text, number or bool value) or ``"all"`` (every column but the id and the image, lists and
    dicts too, see :func:`plain_value`).

    Subclasses implement :meth:`__iter__` and, when it is cheap, :meth:`count`.
    """

    format: str = ""
    #: the decompression-bomb guard of :meth:`load_images` (:func:`~api_prompt.load_image`'s ``max_pixels``)
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __init__(
        self,
        *,
        name: str,
        id_column: str | None = None,
        image_column: str | None = None,
        question_column: str | None = None,
        image_root: str | os.PathLike | None = None,
        path: Path | None = None,
        keep_columns: KeepColumns = "plain",
    ) -> None:
        if keep_columns not in KEEP_COLUMNS:
            raise ConfigError(
                f"keep_columns must be one of {', '.join(KEEP_COLUMNS)}, got {keep_columns!r}"
            )
        self.keep_columns = keep_columns
        default_id = "index" if self.format == "tsv" else "id"
        self.name = name
        self.path = path
        self.id_column = id_column or default_id
        self.id_required = id_column is not None
        self.image_column = image_column or "image"
        self.question_column = question_column or "question"
        self.image_root = Path(image_root) if image_root is not None else None
        base = path if path is not None and path.is_dir() else (path.parent if path else Path.cwd())
        self.base_dir = self.image_root if self.image_root is not None else base
        self.columns: list[str] | None = None

    @abstractmethod
    def __iter__(self) -> Iterator[Sample]:
        """The samples in order, with ``index`` counting from 0."""

    def count(self) -> int | None:
        """How many samples there are, or ``None`` when that would need a costly pass."""
        return None

    def resolve(self, value: Any, sample: Sample) -> Any:
        """One raw image value as :func:`~api_prompt.load_image` takes it (path, bytes, PIL)."""
        return resolve_image(value, self.base_dir)

    def load_images(self, sample: Sample) -> list[tuple[Image.Image, bool]]:
        """Decode the sample's image(s) into RGB, each with whether it was stored as JPEG.

        A sample whose image value is a list (several images for one question) gives one
        entry per image. Thread-safe: runs in worker threads.
        """
        values = sample.image if is_multi_image(sample) else [sample.image]
        if not values:
            raise ImageLoadError("the image list is empty")
        decoded = []
        for value in values:
            resolved = self.resolve(value, sample)
            decoded.append((load_image(resolved, max_pixels=self.max_pixels), is_jpeg(resolved)))
        return decoded

    def load_image(self, sample: Sample) -> Image.Image:
        """The sample's (first) image in RGB."""
        return self.load_images(sample)[0][0]

    def describe(self) -> dict[str, Any]:
        """What identifies this source in ``run.json``."""
        info: dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "id_column": self.id_column,
            "image_column": self.image_column,
            "question_column": self.question_column,
        }
        if self.columns is not None:
            info["columns"] = list(self.columns)
        return info

    def location(self) -> dict[str, Any]:
        """Where the source was read from (recorded, but not compared between runs)."""
        return {
            "path": str(self.path.resolve()) if self.path else None,
            "image_root": str(self.image_root.resolve()) if self.image_root else None,
        }

    # -- helpers for row-based subclasses ------------------------------------------------------

    def _check_columns(self, columns: Iterable[str]) -> None:
        """Refuse a schema that lacks the image or question column (or an explicit id column)."""
        columns = list(columns)
        wanted = [self.image_column, self.question_column] + (
            [self.id_column] if self.id_required else []
        )
        missing = [name for name in wanted if name not in columns]
        if missing:
            raise ConfigError(
                f"{self.name}: no column {', '.join(map(repr, missing))}; its columns are "
                f"{', '.join(map(repr, columns))} (choose others with --id-column, "
                "--image-column, --question-column)"
            )

    def _sample(self, index: int, row: dict[str, Any]) -> Sample:
        """A Sample from one row as a dict; ``extra`` as :attr:`keep_columns` says."""
        raw_id = row.get(self.id_column, index)
        question = row.get(self.question_column)
        extra = {
            key: value
            for key, value in row.items()
            if key not in (self.id_column, self.image_column, self.question_column)
            and isinstance(value, _SCALARS)
        }
        if self.keep_columns == "all":
            for key, value in row.items():
                if key in (self.id_column, self.image_column) or key in extra:
                    continue
                plain = plain_value(value)
                if plain is not None:
                    extra[key] = plain
        return Sample(
            index=index,
            id=str(index if raw_id is None else raw_id),
            image=row.get(self.image_column),
            question=None if question is None else str(question),
            extra=extra,
            error=None
            if self.image_column in row
            else f"the row has no {self.image_column!r} field",
        )


# ------------------------------------------------------------------------------------------------
# Text formats


class JSONLSource(Source):
    """JSON Lines: one object per line; blank lines are skipped, a broken line is one bad sample.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = path.write_text('{"id": 1, "image": "x.png", "question": "q"}\\n\\nnot json\\n')
    >>> [(s.id, s.error) for s in JSONLSource(path)]
    [('1', None), ('1', 'line 3 is not a JSON object: not json')]
    """

    format = "jsonl"

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        self.file = Path(path)
        super().__init__(name=self.file.name, path=self.file, **options)

    def __iter__(self) -> Iterator[Sample]:
        index = 0
        with open(self.file, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError
                except ValueError:
                    text = line.strip()
                    text = text if len(text) <= 60 else text[:57] + "..."
                    yield Sample(
                        index,
                        str(index),
                        None,
                        None,
                        error=f"line {line_number} is not a JSON object: {text}",
                    )
                else:
                    yield self._sample(index, row)
                index += 1

    def count(self) -> int:
        with open(self.file, "rb") as handle:
            return sum(1 for line in handle if line.strip())


class CSVSource(Source):
    """CSV with a header row (read with :mod:`csv`; quoted fields may span lines)."""

    format = "csv"
    delimiter = ","

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        self.file = Path(path)
        super().__init__(name=self.file.name, path=self.file, **options)
        with self._open() as handle:
            header = next(csv.reader(handle, delimiter=self.delimiter), None)
        if not header:
            raise ConfigError(f"{self.name} is empty: expected a header row with column names")
        self.columns = header
        self._check_columns(header)

    def _open(self):
        return open(self.file, encoding="utf-8-sig", newline="")

    def rows(self) -> Iterator[dict[str, str]]:
        """Every row as the file has it (column name -> text), in order."""
        with self._open() as handle:
            yield from csv.DictReader(handle, delimiter=self.delimiter)

    def __iter__(self) -> Iterator[Sample]:
        for index, row in enumerate(self.rows()):
            yield self._sample(index, row)

    def count(self) -> int:
        with self._open() as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            next(reader, None)
            return sum(1 for _ in reader)


class TSVSource(CSVSource):
    """A VLMEvalKit-style TSV: ``index``, ``image`` (base64), ``question`` and any other columns.

    Short image values (at most 64 characters) that name another row's ``index`` are references
    to that row's image, as in VLMEvalKit; they are resolved with one extra pass over the file,
    keeping only the referenced images in memory. Rows with several images (a Python list of
    base64 strings in the image column, as VLMEvalKit writes MMMU) give one sample whose image is
    that list. A ``image_path`` column instead of ``image`` is read as paths.
    """

    format = "tsv"
    delimiter = "\t"

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        path = Path(path)
        if options.get("image_column") is None:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                header = next(csv.reader(handle, delimiter="\t"), [])
            if "image" not in header and "image_path" in header:
                options["image_column"] = "image_path"
        super().__init__(path, **options)
        self._references: dict[str, str] | None = None

    @property
    def embedded(self) -> bool:
        """Whether the image column holds base64 images (not paths)."""
        return self.image_column != "image_path"

    def __iter__(self) -> Iterator[Sample]:
        for sample in super().__iter__():
            if self.embedded and isinstance(sample.image, str) and sample.error is None:
                value = sample.image.strip()
                if value.startswith("["):
                    sample.image = _image_list(value, sample.index)
                    if sample.image is None:
                        sample.error = (
                            "the image value starts with '[' but is not a list of base64 images"
                        )
                elif len(value) <= TSV_REFERENCE_MAX_LEN:
                    referenced = self._reference_table().get(value)
                    if referenced is None:
                        sample.error = (
                            f"image value {value!r} is neither base64 nor the index of another row"
                        )
                    sample.image = referenced
            yield sample

    def _reference_table(self) -> dict[str, str]:
        """index -> base64 image of every row that another row refers to (built on first use)."""
        if self._references is None:
            wanted = {
                row.get(self.image_column, "").strip()
                for row in self.rows()
                if len(row.get(self.image_column, "").strip()) <= TSV_REFERENCE_MAX_LEN
            }
            self._references = {
                row[self.id_column]: row[self.image_column]
                for row in self.rows()
                if row.get(self.id_column) in wanted
                and len(row.get(self.image_column, "")) > TSV_REFERENCE_MAX_LEN
            }
        return self._references

    def resolve(self, value: Any, sample: Sample) -> Any:
        if not self.embedded:
            return super().resolve(value, sample)
        return _decode_base64(value, f"row {sample.index}")


# ------------------------------------------------------------------------------------------------
# Columnar formats


#: a parquet file named as the Hugging Face Hub names them: ``<split>-00000-of-00001[-hash].parquet``
_HUB_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}(-[0-9a-f]+)?\.parquet$")


class TableSource(Source):
    """A source backed by Arrow tables (parquet, ``datasets``): it can be written back whole.

    Besides the samples it yields its rows with every column (:meth:`tables`), the
    ``datasets.Features`` that describe them (:meth:`features`) and a split name, so the
    prompted dataset keeps every column of the input under the same split.
    """

    split: str = "train"

    def features(self) -> Any:
        """The ``datasets.Features`` of the full rows."""
        raise NotImplementedError

    def tables(self, batch_rows: int = 256) -> Iterator[Any]:
        """Every row with every column, as ``pyarrow`` tables (images undecoded), in order."""
        raise NotImplementedError


class ParquetSource(TableSource):
    """Parquet files (one file, or every ``*.parquet`` in a folder or its ``data/`` subfolder, in
    name order), streamed in record batches with :mod:`pyarrow`. Image columns may hold
    ``{"bytes", "path"}`` structs (as ``datasets`` writes them), lists of them (several images),
    binary data or paths/base64 text.

    Folders laid out as on the Hugging Face Hub (``data/test-00000-of-00001.parquet``) are read
    by split: ``split`` picks one (required when there are several); the split name is kept for
    the prompted dataset. Files without a split in their name are the ``train`` split unless
    ``split`` names them otherwise.
    """

    format = "parquet"
    batch_rows = 64

    def __init__(
        self, path: str | os.PathLike, *, split: str | None = None, **options: Any
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        super().__init__(name=path.name, path=path, **options)
        files = [path]
        if path.is_dir():
            files = sorted(path.glob("*.parquet")) or sorted((path / "data").glob("*.parquet"))
        if not files:
            raise ConfigError(f"{path} holds no *.parquet files (nor does {path / 'data'})")
        splits: dict[str, list[Path]] = {}
        for file in files:
            match = _HUB_SHARD.match(file.name)
            splits.setdefault(match["split"] if match else "", []).append(file)
        if "" in splits or len(splits) == 1 and split is None:
            self.files = files
            self.split = split or (next(iter(splits)) or "train")
        elif split is None:
            raise ConfigError(
                f"{path} has splits {', '.join(sorted(splits))}; choose one with --split"
            )
        elif split not in splits:
            raise ConfigError(
                f"{path} has no split {split!r}; its splits are {', '.join(sorted(splits))}"
            )
        else:
            self.files, self.split = splits[split], split
        self._pq = pq
        self.schema = pq.read_schema(self.files[0])
        self.columns = list(self.schema.names)
        self._check_columns(self.columns)
        self._read = (
            list(self.columns)
            if self.keep_columns == "all"
            else [
                name
                for name in self.columns
                if name in (self.id_column, self.image_column, self.question_column)
                or not (
                    pa.types.is_nested(self.schema.field(name).type)
                    or pa.types.is_binary(self.schema.field(name).type)
                    or pa.types.is_large_binary(self.schema.field(name).type)
                )
            ]
        )

    def __iter__(self) -> Iterator[Sample]:
        index = 0
        for file in self.files:
            for batch in self._pq.ParquetFile(file).iter_batches(
                batch_size=self.batch_rows, columns=self._read
            ):
                for row in batch.to_pylist():
                    yield self._sample(index, row)
                    index += 1

    def count(self) -> int:
        return sum(self._pq.ParquetFile(file).metadata.num_rows for file in self.files)

    def features(self) -> Any:
        import datasets

        return datasets.Features.from_arrow_schema(self.schema)

    def tables(self, batch_rows: int = 256) -> Iterator[Any]:
        import pyarrow as pa

        for file in self.files:
            for batch in self._pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split": self.split}


class HFDatasetSource(TableSource):
    """A Hugging Face :class:`datasets.Dataset` (or one split of a ``DatasetDict``), e.g. from
    :func:`datasets.load_from_disk`. Image columns (``Image`` or a list of ``Image``) are read
    undecoded so decoding happens in the runner's worker threads.

    >>> import datasets                                                         # doctest: +SKIP
    >>> HFDatasetSource(datasets.load_from_disk("vqa_subset"), name="vqa")     # doctest: +SKIP
    """

    format = "hf"
    batch_rows = 64

    def __init__(
        self,
        dataset: Any,
        *,
        name: str | None = None,
        split: str | None = None,
        path: Path | None = None,
        **options: Any,
    ) -> None:
        import datasets

        if isinstance(dataset, datasets.DatasetDict):
            if split is None and len(dataset) == 1:
                split = next(iter(dataset))
            if split not in dataset:
                raise ConfigError(
                    f"{name or 'the dataset'} has splits {', '.join(dataset)}; choose one with --split"
                )
            dataset = dataset[split]
        elif split is not None and getattr(dataset, "split", None) not in (None, split):
            raise ConfigError(f"the dataset is split {dataset.split!r}, not {split!r}")
        if name is None:
            name = getattr(dataset.info, "dataset_name", None) or "dataset"
        super().__init__(name=name, path=path, **options)
        self.split = split or (str(dataset.split) if getattr(dataset, "split", None) else "train")
        self.columns = list(dataset.column_names)
        self._check_columns(self.columns)
        self.full = dataset
        features = dataset.features
        if self.keep_columns == "all":  # every column but the other images
            keep = [
                column
                for column in self.columns
                if column == self.image_column or not isinstance(features[column], datasets.Image)
            ]
        else:
            keep = [
                column
                for column in self.columns
                if column in (self.id_column, self.image_column, self.question_column)
                or isinstance(features[column], datasets.Value)
            ]
        dataset = dataset.select_columns(keep)
        undecoded = _undecoded(features[self.image_column])
        if undecoded is not None:
            dataset = dataset.cast_column(self.image_column, undecoded)
        self.dataset = dataset

    def __iter__(self) -> Iterator[Sample]:
        index = 0
        for batch in self.dataset.iter(batch_size=self.batch_rows):
            columns = list(batch)
            for values in zip(*(batch[column] for column in columns)):
                yield self._sample(index, dict(zip(columns, values)))
                index += 1

    def count(self) -> int | None:
        try:
            return len(self.dataset)
        except TypeError:  # an IterableDataset
            return None

    def features(self) -> Any:
        return self.full.features

    def tables(self, batch_rows: int = 256) -> Iterator[Any]:
        arrow = self.full.with_format("arrow")
        for start in range(0, len(arrow), batch_rows):
            yield arrow[start : start + batch_rows]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split": self.split}


def _undecoded(feature: Any) -> Any:
    """The same image feature with ``decode=False`` (also inside a list), or None if not an image."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Image):
        return type(feature)(datasets.Image(decode=False))
    if isinstance(feature, list) and len(feature) == 1 and isinstance(feature[0], datasets.Image):
        return [datasets.Image(decode=False)]
    return None


# ------------------------------------------------------------------------------------------------
# Opening by path


def detect_format(path: str | os.PathLike) -> str:
    """The format of INPUT from its extension (files) or contents (folders).

    >>> detect_format("data/MMVet.tsv"), detect_format("q.jsonl")
    ('tsv', 'jsonl')
    """
    path = Path(path)
    if path.is_dir():
        if any(
            (path / marker).exists()
            for marker in ("dataset_info.json", "state.json", "dataset_dict.json")
        ):
            return "hf"
        if any(path.glob("*.parquet")) or any((path / "data").glob("*.parquet")):
            return "parquet"
        raise ConfigError(
            f"{path} is a folder but neither a saved Hugging Face dataset (save_to_disk) nor a "
            "folder of parquet files"
        )
    suffix = path.suffix.lower()
    formats = {
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".csv": "csv",
        ".tsv": "tsv",
        ".parquet": "parquet",
    }
    if suffix in formats:
        return formats[suffix]
    raise ConfigError(
        f"cannot tell the format of {path.name}: use a .jsonl, .csv, .tsv or .parquet file, a "
        "saved Hugging Face dataset folder, or name the format with --input-format"
    )


def open_source(
    source: Any,
    *,
    format: str | None = None,
    id_column: str | None = None,
    image_column: str | None = None,
    question_column: str | None = None,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    readers: Mapping[str, Callable[..., Source]] | None = None,
    keep_columns: KeepColumns = "plain",
) -> Source:
    """A :class:`Source` for a path (format from the extension unless given), a ``datasets``
    dataset object, or an existing Source (returned as is).

    ``readers`` replaces :data:`READERS`, the Source class for each format; ``keep_columns``
    as for :class:`Source` (``"all"``: evaluation keeps the ground truth, lists included).

    >>> open_source("MMVet.tsv", question_column="question")    # doctest: +SKIP
    """
    readers = READERS if readers is None else readers
    if isinstance(source, Source):
        return source
    options = dict(
        id_column=id_column,
        image_column=image_column,
        question_column=question_column,
        image_root=image_root,
        keep_columns=keep_columns,
    )
    if not isinstance(source, (str, os.PathLike)):
        if (
            hasattr(source, "column_names")
            and hasattr(source, "features")
            or _is_dataset_dict(source)
        ):
            return readers["hf"](source, split=split, **options)
        raise TypeError(
            f"cannot read samples from {type(source).__name__}; pass a path or a datasets.Dataset"
        )
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"input {str(path)!r} does not exist")
    format = format or detect_format(path)
    if format == "hf":
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"cannot load the dataset saved in {path}: {exc}") from exc
        return readers["hf"](dataset, name=path.name, split=split, path=path, **options)
    if format not in readers:
        raise ConfigError(f"unknown input format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format == "parquet":
        return readers["parquet"](path, split=split, **options)
    if split is not None:
        raise ConfigError("--split applies to parquet and Hugging Face datasets only")
    return readers[format](path, **options)


#: the Source class for each input format ("hf": a ``datasets`` dataset, saved or in memory)
READERS: dict[str, Callable[..., Source]] = {
    "jsonl": JSONLSource,
    "csv": CSVSource,
    "tsv": TSVSource,
    "parquet": ParquetSource,
    "hf": HFDatasetSource,
}


def plain_value(value: Any) -> Any:
    """A JSON-able copy of a column value (arrays become lists), or None for binary data and
    image structs.

    >>> plain_value((1, {"a": b"x"})), plain_value({"bytes": b"...", "path": None})
    ([1, {'a': None}], None)
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    if isinstance(value, dict):
        if "bytes" in value:  # an image struct
            return None
        return {str(key): plain_value(item) for key, item in value.items()}
    return None


def _is_dataset_dict(value: Any) -> bool:
    return type(value).__name__ in ("DatasetDict", "IterableDatasetDict")


# ------------------------------------------------------------------------------------------------
# Image values


def resolve_image(value: Any, base_dir: str | os.PathLike | None = None) -> Any:
    """Turn a raw image value into what :func:`~api_prompt.load_image` takes (path, bytes, PIL).

    - ``{"bytes": b"...", "path": ...}`` (``datasets``): the bytes, else the path;
    - ``data:image/png;base64,...``: the decoded bytes;
    - text: a path (relative to ``base_dir``) when that file exists, else base64 when it looks
      like base64, else an :class:`~api_prompt.errors.ImageLoadError` naming the missing file.

    >>> resolve_image({"bytes": b"\\x89PNG", "path": "a.png"})
    b'\\x89PNG'
    >>> resolve_image("data:image/png;base64,iVBORw==")
    b'\\x89PNG'
    """
    if isinstance(value, Image.Image) or isinstance(value, (bytes, bytearray, memoryview)):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return resolve_image(str(value["path"]), base_dir)
        raise ImageLoadError("the image value is a dict with neither 'bytes' nor 'path'")
    if value is None:
        raise ImageLoadError("the sample has no image")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ImageLoadError(f"cannot read an image from a {type(value).__name__} value")
    text = value.strip()
    if not text:
        raise ImageLoadError("the image value is empty")
    if text[:5].lower() == "data:":
        header, _, payload = text.partition(",")
        if ";base64" not in header.lower():
            raise ImageLoadError("only base64 data URLs are supported (data:image/...;base64,...)")
        return _decode_base64(payload, "data URL")
    path = Path(text)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if len(text) < 4096 and path.exists():
        return path
    if len(text) >= 64 and _BASE64.fullmatch(text):
        return _decode_base64(text, "base64 image")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise ImageLoadError(
            f"cannot load image {text!r}: URLs are not supported, download it first"
        )
    if base_dir is not None and not Path(text).is_absolute() and len(text) < 4096:
        raise ImageLoadError(
            f"cannot load image {text!r}: no such file {str(path.resolve())!r} (relative image paths "
            f"are read from {str(Path(base_dir).resolve())!r}; image_root=FOLDER reads them from another folder)"
        )
    return path  # load_image raises ImageLoadError naming the missing file


def _image_list(text: str, index: int) -> list[str] | None:
    """The images of a VLMEvalKit multi-image cell (``"['b64', 'b64']"``), or None."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


def _decode_base64(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or not text.strip():
        raise ImageLoadError(f"{what}: the image value is empty")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageLoadError(f"{what}: not valid base64 ({exc})") from exc
