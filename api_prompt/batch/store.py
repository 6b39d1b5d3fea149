"""The output folder of a batch run: file names, the manifest, ``run.json``, atomic writes.

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
import json
import os
import re
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ConfigError

__all__ = ["Namer", "safe_name", "OutputDir", "package_versions", "read_manifest", "compare_parameters"]

MANIFEST = "manifest.jsonl"
RUN_JSON = "run.json"
IMAGES = "images"
LOCK = ".lock"
TMP_SUFFIX = ".tmp"
#: the longest readable part of a file name (a hash and the extension come on top)
MAX_NAME = 100

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: the ``file`` of a manifest record: an image straight inside ``images/``, named by :class:`Namer`
_IMAGE_FILE = re.compile(rf"{IMAGES}/[A-Za-z0-9-][A-Za-z0-9._-]*")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


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
        "api_prompt": "api-prompt", "torch": "torch", "open_clip": "open_clip_torch",
        "transformers": "transformers", "pillow": "pillow", "numpy": "numpy",
        "datasets": "datasets", "pyarrow": "pyarrow",
    }
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for key, distribution in distributions.items():
        try:
            found[key] = version(distribution)
        except PackageNotFoundError:
            found[key] = None
    return found


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, odd objects become text)."""
    return json.loads(json.dumps(value, default=str))


def compare_parameters(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two parameter trees (``key: old -> new``).

    >>> compare_parameters({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c: 2 -> 3']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                changes.append(f"{name}: (unset) -> {json.dumps(new[key])}")
            elif key not in new:
                changes.append(f"{name}: {json.dumps(old[key])} -> (unset)")
            else:
                changes.extend(compare_parameters(old[key], new[key], name))
        return changes
    return [] if old == new else [f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"]


def read_manifest(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a manifest in file order; a broken (truncated) line is skipped."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def latest_records(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each sample (keyed by its file name), in first-seen order."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        key = record.get("name")
        if key is not None:
            latest[key] = record
    return latest


class OutputDir:
    """One batch run's output folder (see the module docs for the layout).

    >>> import tempfile
    >>> out = OutputDir(tempfile.mkdtemp() + "/run")
    >>> out.image_path("q1", "png").relative_to(out.root).as_posix()
    'images/q1.png'
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.images = self.root / IMAGES
        self.manifest = self.root / MANIFEST
        self.run_json = self.root / RUN_JSON
        self._lock_handle = None
        self._manifest_fd: int | None = None

    # -- state ---------------------------------------------------------------------------------

    def read_run(self) -> dict[str, Any] | None:
        """The stored ``run.json`` (None when there is none)."""
        try:
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ConfigError(f"{self.run_json} is not valid JSON ({exc}); use --overwrite to start afresh") from exc

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest manifest record of every sample, keyed by file name stem."""
        return latest_records(read_manifest(self.manifest))

    def is_done(self, record: dict[str, Any] | None) -> bool:
        """Whether ``record`` says ``ok`` and its image(s) are in this folder's ``images/``.

        A ``file`` that points anywhere else (a hand-edited manifest) never counts, so nothing
        is read or written outside the folder on its behalf.
        """
        if not record or record.get("status") != "ok":
            return False
        files = record_files(record)
        return bool(files) and all(
            isinstance(file, str) and _IMAGE_FILE.fullmatch(file) is not None and (self.root / file).is_file()
            for file in files
        )

    # -- preparing -----------------------------------------------------------------------------

    def check_usable(self) -> None:
        """Refuse a path that is a file, or a non-empty folder no batch run wrote (cheap)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} exists and is not a folder")
        if self.root.is_dir() and not self.run_json.exists():
            # Without run.json only what a run creates before writing it may be there, and empty,
            # so --overwrite can never delete a user's own images/ folder or manifest.
            others = [p.name for p in self.root.iterdir() if p.name != LOCK and not _is_empty(p)]
            if others:
                raise ConfigError(
                    f"--out {self.root} is not empty and holds no run.json from an earlier batch run "
                    f"(found {', '.join(sorted(others)[:3])}); choose a new or empty folder"
                )

    def prepare(self, parameters: dict[str, Any], *, overwrite: bool = False) -> bool:
        """Check ``DIR`` against ``parameters``; returns True when it resumes an earlier run.

        ``DIR`` may be missing, empty, or hold an earlier run with the same parameters. With
        ``overwrite`` an earlier run's files (only those) are deleted first.
        """
        self.check_usable()
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock()
        self.check_usable()
        try:
            stored = self.read_run()
        except ConfigError:
            if not overwrite:
                raise
            stored = None
        if overwrite:
            self.clear(stored)
            return False
        if stored is not None:
            changes = compare_parameters(stored.get("parameters"), jsonable(parameters))
            if changes:
                shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
                raise ConfigError(
                    f"--out {self.root} holds a run with different parameters ({shown}); use a new "
                    "--out folder, or --overwrite to discard the earlier outputs"
                )
        self.images.mkdir(exist_ok=True)
        self.repair()
        return stored is not None

    def clear(self, stored: dict[str, Any] | None) -> None:
        """Delete an earlier run's outputs (images/, manifest, run.json, the table or dataset it wrote)."""
        shutil.rmtree(self.images, ignore_errors=True)
        for path in (self.manifest, self.run_json):
            path.unlink(missing_ok=True)
        self.remove_exports(stored)
        self.images.mkdir()

    def remove_exports(self, stored: dict[str, Any] | None) -> None:
        """Delete the TSV / dataset an earlier run (described by its run.json) exported."""
        outputs = (stored or {}).get("outputs") or {}
        for key in ("tsv", "dataset", "parquet"):
            name = plain_file_name(outputs.get(key))
            if name is None:
                continue
            target = self.root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    def repair(self) -> None:
        """Remove temporary files of a killed run and cut a truncated last manifest line."""
        for leftover in self.images.glob(f".*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
        for leftover in self.root.glob(f".*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
        if self.manifest.exists():
            with open(self.manifest, "rb+") as handle:
                data = handle.read()
                end = data.rfind(b"\n") + 1
                if end != len(data):
                    handle.truncate(end)

    def lock(self) -> None:
        """Refuse a second run writing to the same folder at the same time (POSIX only)."""
        if self._lock_handle is None:
            self._lock_handle = lock_folder(self.root, "batch run")

    def close(self) -> None:
        """Close the manifest and release the lock."""
        if self._manifest_fd is not None:
            os.close(self._manifest_fd)
            self._manifest_fd = None
        if self._lock_handle is not None:
            self._lock_handle.close()   # the file stays: unlinking it would let a racing run lock a stale one
            self._lock_handle = None

    # -- writing -------------------------------------------------------------------------------

    def image_path(self, name: str, extension: str) -> Path:
        """Where the image of the sample called ``name`` goes."""
        return self.images / f"{name}.{extension}"

    def write_run(self, run: dict[str, Any]) -> None:
        """Write ``run.json`` atomically."""
        write_atomic(self.run_json, (json.dumps(jsonable(run), indent=2, sort_keys=False) + "\n").encode())

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append whole manifest lines, then flush and fsync."""
        if not records:
            return
        if self._manifest_fd is None:
            self._manifest_fd = os.open(self.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._manifest_fd, view)
            view = view[written:]
        os.fsync(self._manifest_fd)


def plain_file_name(name: Any) -> str | None:
    """``name`` when it names a file directly inside a folder (no separator, not ``..``), else None.

    >>> plain_file_name("MMVet.tsv"), plain_file_name("../MMVet.tsv"), plain_file_name("..")
    ('MMVet.tsv', None, None)
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        return None
    return name


def lock_folder(root: Path, what: str):
    """An exclusive lock on ``root/.lock`` held while the returned file stays open (POSIX; None
    elsewhere), or a ConfigError when another ``what`` (e.g. "batch run") holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    handle = open(Path(root) / LOCK, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"another {what} is writing to {root}; wait for it or use another --out") from None
    return handle


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file and :func:`os.replace`."""
    temporary = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def _is_empty(path: Path) -> bool:
    """An empty file, or a folder with nothing in it."""
    return not any(path.iterdir()) if path.is_dir() else path.stat().st_size == 0
