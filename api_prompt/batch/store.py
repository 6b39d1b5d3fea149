"""The output folder of a batch run: file names, the manifest, ``run.json``.

:class:`OutputDir` is a :class:`~api_prompt.runs.RunFolder` (lock, parameter check, atomic
writes, repair, append, resume: the rules ``api-prompt eval`` follows too) with the batch
layout below.

Layout of ``DIR``::

    DIR/run.json            parameters, prompter.describe(), package versions, run details
    DIR/manifest.jsonl      one JSON object per finished sample (appended; last line per file wins)
    DIR/images/<name>.png   prompted images (.jpg for JPEG inputs or --format jpg); a sample with
                            several images has <name>--1.png ... <name>--N.png
    DIR/<stem>_API.tsv      VLMEvalKit TSV inputs: the same table with the prompted images
    DIR/dataset/            parquet and ``datasets`` inputs: a DatasetDict (save_to_disk) with
                            every column of the input and the prompted images
    DIR/data/<split>-*.parquet  the same as parquet shards (--output-format parquet)
    DIR/.lock               held (flock) while a run writes, so two runs never share a folder

Crash safety: an image is written to a hidden temporary name in ``images/`` and moved into
place with :func:`os.replace`; its manifest line is appended only afterwards, whole, followed by
flush and fsync. A run killed at any moment therefore leaves either a complete image with or
without its line, or a temporary file that the next run deletes. A truncated last manifest line
is cut off before the next run appends.

File names come from sample ids through :class:`Namer`: only ``[A-Za-z0-9._-]`` survive, so a
name can never leave ``images/`` (no separators, no leading dot, no ``..``); an id that had to
change gets a short hash of the original id, and any name already taken (also when compared
without case, for case-insensitive file systems) gets another hash, so every sample has its own
file and the same input always gives the same names.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..runs import (
    TMP_SUFFIX,
    RunFolder,
    compare_parameters,
    jsonable,
    lock_folder,
    read_jsonl,
    remove_path,
    write_atomic,
)

__all__ = [
    "Namer",
    "safe_name",
    "OutputDir",
    "package_versions",
    "read_manifest",
    "latest_records",
    "record_files",
    "part_names",
    "plain_file_name",
    # the run folder's helpers, where batch code has always imported them
    "compare_parameters",
    "jsonable",
    "write_atomic",
    "lock_folder",
    "TMP_SUFFIX",
]

MANIFEST = "manifest.jsonl"
RUN_JSON = "run.json"
IMAGES = "images"
#: outputs of ``run.json`` that are not an export
OWN_OUTPUTS = ("manifest", IMAGES)
#: the longest readable part of a file name (a hash and the extension come on top)
MAX_NAME = 100

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: the ``file`` of a manifest record: an image straight inside ``images/``, named by :class:`Namer`
_IMAGE_FILE = re.compile(rf"{IMAGES}/[A-Za-z0-9-][A-Za-z0-9._-]*")
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


def _hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _readable(sample_id: str) -> str:
    """The part of an id that can appear in a file name as it is."""
    return _UNSAFE.sub("_", sample_id).lstrip("._")[:MAX_NAME].rstrip(".") or "sample"


def safe_name(sample_id: str) -> str:
    """A file name stem for ``sample_id`` that is safe on every common file system.

    Ids made only of letters, digits, ``.``, ``_`` and ``-`` (not starting with a dot, not too
    long, not a reserved Windows name) stay as they are; anything else keeps its readable part
    and gets ``-`` plus 8 hex digits of the id's SHA-256.

    >>> safe_name("COCO_val2014_42")
    'COCO_val2014_42'
    >>> safe_name("../../etc/passwd")
    'etc_passwd-3754d6cb'
    >>> safe_name("")
    'sample-e3b0c442'
    """
    sample_id = str(sample_id)
    readable = _readable(sample_id)
    if readable == sample_id and readable.split(".")[0].upper() not in _WINDOWS_RESERVED:
        return readable
    return f"{readable}-{_hash(sample_id)}"


class Namer:
    """Gives every sample a unique, safe file name stem, deterministically in input order.

    A sample with several images (``parts``) gets ``<name>--1`` ... ``<name>--N`` as well (the
    names VLMEvalKit gives the images of such rows); those are reserved too, so no other sample
    can take them.

    >>> namer = Namer()
    >>> namer("a"), namer("A"), namer("a"), namer("a/b")
    ('a', 'A-6bd54eb3', 'a-9fd35744', 'a_b-c14cddc0')
    >>> namer("m", parts=2), namer("m--1")
    ('m', 'm--1-04d0e3f2')
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def __call__(self, sample_id: str, parts: int = 0) -> str:
        sample_id = str(sample_id)
        name = safe_name(sample_id)
        attempt = 0
        while any(stem.casefold() in self._taken for stem in [name, *part_names(name, parts)]):
            attempt += 1
            name = f"{_readable(sample_id)}-{_hash(f'{sample_id}#{attempt}')}"
        self._taken.update(stem.casefold() for stem in [name, *part_names(name, parts)])
        return name


def part_names(name: str, parts: int) -> list[str]:
    """The file name stems of the images of a sample with ``parts`` images (none for one image).

    >>> part_names("q7", 2), part_names("q7", 0)
    (['q7--1', 'q7--2'], [])
    """
    return [f"{name}--{k}" for k in range(1, parts + 1)]


def record_files(record: dict[str, Any]) -> list[Any]:
    """The output files a manifest record names: ``files`` (several images) or ``file``."""
    files = record.get("files")
    if isinstance(files, list):
        return files
    return [record.get("file")]


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the outputs (None when not installed)."""
    distributions = {
        "api_prompt": "api-prompt",
        "torch": "torch",
        "open_clip": "open_clip_torch",
        "transformers": "transformers",
        "pillow": "pillow",
        "numpy": "numpy",
        "datasets": "datasets",
        "pyarrow": "pyarrow",
    }
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for key, distribution in distributions.items():
        try:
            found[key] = version(distribution)
        except PackageNotFoundError:
            found[key] = None
    return found


def read_manifest(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a manifest in file order; a broken (truncated) line is skipped."""
    return read_jsonl(path)


def latest_records(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each sample (keyed by its file name), in first-seen order."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        key = record.get("name")
        if key is not None:
            latest[key] = record
    return latest


class OutputDir(RunFolder):
    """One batch run's output folder (see the module docs for the layout).

    >>> import tempfile
    >>> out = OutputDir(tempfile.mkdtemp() + "/run")
    >>> out.image_path("q1", "png").relative_to(out.root).as_posix()
    'images/q1.png'
    """

    def __init__(self, root: str | os.PathLike) -> None:
        # a run creates images/ before it writes run.json: a killed run may leave it empty
        super().__init__(
            root,
            run_file=RUN_JSON,
            log=MANIFEST,
            what="batch run",
            early=(IMAGES, MANIFEST),
            outputs=(IMAGES,),
        )
        self.images = self.root / IMAGES
        self.manifest = self.log

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest manifest record of every sample, keyed by file name stem."""
        return latest_records(self.read_log())

    def is_done(self, record: dict[str, Any] | None) -> bool:
        """Whether ``record`` says ``ok`` and its image(s) are in this folder's ``images/``.

        A ``file`` that points anywhere else (a hand-edited manifest) never counts, so nothing
        is read or written outside the folder on its behalf.
        """
        if not record or record.get("status") != "ok":
            return False
        files = record_files(record)
        return bool(files) and all(
            isinstance(file, str)
            and _IMAGE_FILE.fullmatch(file) is not None
            and (self.root / file).is_file()
            for file in files
        )

    def prepare(self, parameters: dict[str, Any], *, overwrite: bool = False) -> bool:
        """Check ``DIR`` against ``parameters``; returns True when it resumes an earlier run.

        ``DIR`` may be missing, empty, or hold an earlier run with the same parameters. With
        ``overwrite`` an earlier run's files (only those) are deleted first.
        """
        resumed = super().prepare(parameters, overwrite=overwrite)
        self.images.mkdir(exist_ok=True)
        return resumed

    def clear(self, stored: dict[str, Any] | None) -> None:
        """Delete an earlier run's outputs (images/, manifest, run.json, the table or dataset it wrote)."""
        super().clear(stored)
        self.remove_exports(stored)

    def remove_exports(self, stored: dict[str, Any] | None) -> None:
        """Delete what an earlier run (described by its run.json) exported: every entry of its
        ``outputs`` but the manifest and the images, when it names a file or folder in ``DIR``."""
        outputs = (stored or {}).get("outputs") or {}
        for key, name in outputs.items():
            name = plain_file_name(name)
            if (
                key not in OWN_OUTPUTS
                and name is not None
                and name not in (RUN_JSON, MANIFEST, IMAGES)
            ):
                remove_path(self.root / name)

    def repair(self) -> None:
        """Also delete the temporary images of a killed run."""
        super().repair()
        for leftover in self.images.glob(f".*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    def image_path(self, name: str, extension: str) -> Path:
        """Where the image of the sample called ``name`` goes."""
        return self.images / f"{name}.{extension}"


def plain_file_name(name: Any) -> str | None:
    """``name`` when it names a file directly inside a folder (no separator, not ``..``), else None.

    >>> plain_file_name("MMVet.tsv"), plain_file_name("../MMVet.tsv"), plain_file_name("..")
    ('MMVet.tsv', None, None)
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        return None
    return name
