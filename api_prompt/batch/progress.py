"""Progress of a batch run on stderr: a tqdm bar on a terminal, a plain line every 30 s in a log."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

__all__ = ["Progress", "NoProgress", "LineProgress", "progress_bar", "duration"]


class Progress(Protocol):
    """What the engines need of a progress display (tqdm's bar has it)."""

    def update(self, n: int = 1) -> Any: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: Any) -> Any: ...


class NoProgress:
    """Progress that shows nothing (``progress=False``)."""

    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass


class LineProgress:
    """Progress for logs: one plain line every ``interval`` seconds (and at the end), no ``\\r``.

    >>> import io
    >>> stream = io.StringIO()
    >>> with LineProgress(4, 0, stream=stream, interval=0) as bar:
    ...     bar.update(2)
    >>> stream.getvalue().splitlines()[0].startswith("prompting: 2/4 (50%)")
    True
    """

    def __init__(
        self,
        total: int | None,
        initial: int,
        *,
        stream: TextIO | None = None,
        interval: float = 30.0,
    ) -> None:
        self.total, self.done, self.start_done = total, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.started = self.last = time.monotonic()
        self.printed_at = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if n and now - self.last >= self.interval:
            self.last = now
            self.write(now)

    def write(self, now: float) -> None:
        if self.printed_at == self.done:
            return
        self.printed_at = self.done
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        text = f"prompting: {self.done}/{self.total if self.total is not None else '?'}"
        if self.total:
            text += f" ({100 * self.done // self.total}%)"
        text += f", {rate:.2f} img/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {duration((self.total - self.done) / rate)} left"
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.done > self.start_done:
            self.write(time.monotonic())


def duration(seconds: float) -> str:
    """
    >>> duration(42), duration(3725)
    ('42s', '1h02m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_bar(enabled: bool, total: int | None, initial: int) -> Progress:
    """A tqdm bar on a terminal; plain lines every 30 s when stderr is redirected to a log."""
    if not enabled:
        return NoProgress()
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return LineProgress(total, initial)
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        desc="prompting",
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )
