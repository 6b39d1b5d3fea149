"""The run folder shared by ``api-prompt batch`` and ``api-prompt eval``: one folder per run.

A run folder holds a *run file* (JSON: the run's ``parameters``, compared on every rerun), an
append-only *log* (JSON Lines: one record per finished piece of work; the last record of a key
wins) and the outputs made from them. The rules, the same for both commands:

- **usable**: a missing or empty folder, or one that holds this kind of run's file. A folder
  without it may hold only the lock and, empty, what the run creates before its run file (so
  ``--overwrite`` can never delete a user's own files).
- **lock**: one run writes to a folder at a time (``flock`` on ``DIR/.lock``, POSIX).
- **parameter check**: a rerun with other ``parameters`` is refused (naming the first changes)
  unless ``overwrite``, which deletes the earlier run's outputs (only those) first.
- **atomic writes**: whole files through a hidden temporary name and :func:`os.replace`; log
  lines whole, in one ``write`` per call, fsynced before :meth:`RunFolder.append` returns.
- **repair**: a resumed run deletes the temporary files a killed run left and cuts a truncated
  last log line, so every record read back was written whole.
- **resume**: :meth:`RunFolder.latest` gives the last record of every key; the caller skips
  what is done.

>>> import tempfile
>>> folder = RunFolder(tempfile.mkdtemp() + "/run", run_file="run.json", log="log.jsonl", what="test run")
>>> folder.prepare({"seed": 1})
False
>>> folder.write_run({"parameters": {"seed": 1}})
>>> folder.append([{"id": "a", "ok": False}, {"id": "a", "ok": True}])
>>> folder.latest(lambda record: record["id"])
{'a': {'id': 'a', 'ok': True}}
>>> folder.close()
>>> RunFolder(folder.root, run_file="run.json", log="log.jsonl", what="test run").prepare({"seed": 2})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
api_prompt.errors.ConfigError: --out ... holds a run with different parameters (seed: 1 -> 2); use a new --out folder, or --overwrite to discard the earlier outputs
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from .errors import APIPromptError, ConfigError

__all__ = [
    "RunFolder",
    "write_atomic",
    "lock_folder",
    "compare_parameters",
    "jsonable",
    "read_jsonl",
    "error_message",
    "LOCK",
    "TMP_SUFFIX",
]

LOCK = ".lock"
TMP_SUFFIX = ".tmp"
#: parameter changes named in a refusal
SHOWN_CHANGES = 4

Key = TypeVar("Key", bound=Hashable)


def error_message(exc: BaseException) -> str:
    """One line for a failed piece of work: the exception's type and text; an api-prompt error's
    own text (it is written for people already).

    >>> error_message(ValueError("not\\n an image")), error_message(ConfigError("bad --limit"))
    ('ValueError: not an image', 'bad --limit')
    >>> error_message(MemoryError())
    'MemoryError'
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, APIPromptError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, odd objects become text).

    >>> jsonable({"size": (2, 3), "path": Path("a")})
    {'size': [2, 3], 'path': 'a'}
    """
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


def shown_changes(changes: list[str]) -> str:
    """The first changes, joined, and how many more there are.

    >>> shown_changes(["a: 1 -> 2"])
    'a: 1 -> 2'
    """
    more = len(changes) - SHOWN_CHANGES
    return "; ".join(changes[:SHOWN_CHANGES]) + (f"; and {more} more" if more > 0 else "")


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file in file order (none when it is missing); a broken
    (truncated) line or one that is not an object is skipped."""
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


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file and :func:`os.replace`."""
    temporary = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def lock_folder(root: Path, what: str) -> IO[str] | None:
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
        raise ConfigError(
            f"another {what} is writing to {root}; wait for it or use another --out"
        ) from None
    return handle


def remove_path(path: Path) -> None:
    """Delete a file, or a folder with what it holds (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunFolder:
    """``DIR`` of one run: its run file, its append-only log, its outputs (see the module docs).

    Args:
        root: the folder.
        run_file: the run file's name (``run.json`` for batch, ``eval_run.json`` for eval).
        log: the log's name (``manifest.jsonl``, ``predictions.jsonl``).
        what: what the folder holds, for messages ("batch run", "evaluation").
        early: what the run creates before its run file; allowed, empty, in a folder without one.
        outputs: what ``overwrite`` deletes besides the run file and the log (subclasses may
            delete more in :meth:`clear`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        run_file: str,
        log: str,
        what: str,
        early: Iterable[str] = (),
        outputs: Iterable[str] = (),
    ) -> None:
        self.root = Path(root)
        self.run_json = self.root / run_file
        self.log = self.root / log
        self.what = what
        self.early = frozenset(early)
        self.outputs = tuple(outputs)
        self._lock_handle: IO[str] | None = None
        self._log_fd: int | None = None

    # -- state ---------------------------------------------------------------------------------

    def read_run(self) -> dict[str, Any] | None:
        """The stored run file (None when there is none)."""
        try:
            stored = json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ConfigError(
                f"{self.run_json} is not valid JSON ({exc}); use --overwrite to start afresh"
            ) from exc
        if not isinstance(stored, dict):
            raise ConfigError(
                f"{self.run_json} does not hold a JSON object; use --overwrite to start afresh"
            )
        return stored

    def read_log(self) -> Iterator[dict[str, Any]]:
        """The log's records in file order."""
        return read_jsonl(self.log)

    def latest(self, key: Callable[[dict[str, Any]], Key]) -> dict[Key, dict[str, Any]]:
        """The last record for every ``key(record)`` in first-seen order; records the key
        function refuses (KeyError, TypeError) or maps to None are skipped."""
        latest: dict[Key, dict[str, Any]] = {}
        for record in self.read_log():
            try:
                name = key(record)
            except (KeyError, TypeError):
                continue
            if name is not None:
                latest[name] = record
        return latest

    # -- preparing -----------------------------------------------------------------------------

    def check_usable(self) -> None:
        """Refuse a path that is a file, or a non-empty folder that holds no run file (cheap)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} exists and is not a folder")
        if self.root.is_dir() and not self.run_json.exists():
            others = [
                p.name
                for p in self.root.iterdir()
                if p.name != LOCK and not (p.name in self.early and _is_empty(p))
            ]
            if others:
                raise ConfigError(
                    f"--out {self.root} is not empty and holds no {self.run_json.name} from an earlier "
                    f"{self.what} (found {', '.join(sorted(others)[:3])}); choose a new or empty folder"
                )

    def lock(self) -> None:
        """Create the folder and hold its lock (refusing a second run at the same time)."""
        if self._lock_handle is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock_handle = lock_folder(self.root, self.what)

    def prepare(self, parameters: dict[str, Any], *, overwrite: bool = False) -> bool:
        """Check, lock and repair ``DIR`` for a run with ``parameters``; True when it resumes an
        earlier run (same parameters), False for a new one (or ``overwrite``: the earlier run's
        outputs are deleted first)."""
        self.check_usable()
        self.lock()
        self.check_usable()  # again under the lock: another run may have written meanwhile
        try:
            stored = self.read_run()
        except ConfigError:
            if not overwrite:
                raise
            stored = None
        if overwrite:
            self.clear(stored)
            stored = None
        elif stored is not None:
            changes = compare_parameters(stored.get("parameters"), jsonable(parameters))
            if changes:
                raise ConfigError(
                    f"--out {self.root} holds a run with different parameters ({shown_changes(changes)}); "
                    "use a new --out folder, or --overwrite to discard the earlier outputs"
                )
        self.repair()
        return stored is not None

    def clear(self, stored: dict[str, Any] | None) -> None:
        """Delete an earlier run's run file, log and outputs (``stored``: its run file, if readable)."""
        for name in (self.run_json.name, self.log.name, *self.outputs):
            remove_path(self.root / name)

    def repair(self) -> None:
        """Delete the temporary files a killed run left and cut a truncated last log line."""
        for leftover in self.root.glob(f".*{TMP_SUFFIX}"):
            remove_path(leftover)
        if self.log.exists():
            with open(self.log, "rb+") as handle:
                data = handle.read()
                end = data.rfind(b"\n") + 1
                if end != len(data):
                    handle.truncate(end)

    # -- writing -------------------------------------------------------------------------------

    def write_run(self, info: dict[str, Any]) -> None:
        """Write the run file atomically."""
        write_atomic(self.run_json, (json.dumps(jsonable(info), indent=2) + "\n").encode())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append whole lines in one write, then fsync: a record is on disk once this returns."""
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode(
            "utf-8"
        )
        if not data:
            return
        if self._log_fd is None:
            self._log_fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(self._log_fd, view) :]
        os.fsync(self._log_fd)

    def close(self) -> None:
        """Close the log and release the lock (the lock file stays: unlinking it would let a
        racing run lock a stale one)."""
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None


def _is_empty(path: Path) -> bool:
    """An empty file, or a folder with nothing in it."""
    return not any(path.iterdir()) if path.is_dir() else path.stat().st_size == 0
