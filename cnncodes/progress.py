"""Progress reporting that keeps stdout clean and log files readable.

Every message and progress bar goes to **stderr**: stdout carries only the data a command
was asked for. On a terminal a tqdm bar redraws in place; when stderr is a file or a pipe
(a log, CI, a cluster job) there is no bar, only one line when a stage ends, so a log never
fills with carriage returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["Progress", "log", "progress", "stderr_is_terminal"]

T = TypeVar("T")


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (progress bars redraw there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def log(prefix: str, message: str, *, enabled: bool = True) -> None:
    """One ``[prefix] message`` line on stderr (when ``enabled``)."""
    if enabled:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar on a terminal, else one summary line on stderr when the stage ends.

    Use as a context manager; ``update``, ``set_postfix`` and iteration work the same way
    in both modes. ``enabled=False`` prints nothing at all.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        enabled: bool = True,
        leave: bool = True,
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc, self.unit = desc, unit
        self.enabled = enabled
        self.count = initial
        self.initial = initial
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self._bar = None
        self._closed = False
        if enabled and stderr_is_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                iterable, total=self.total, desc=desc, unit=unit, initial=initial,
                dynamic_ncols=True, leave=leave, file=sys.stderr,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self._bar is not None:
            for value in self._bar:
                self.count += 1
                yield value
            return
        if self.iterable is None:
            return
        for value in self.iterable:
            yield value
            self.count += 1

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        if not self.enabled:
            return
        seconds = time.perf_counter() - self.started
        done = self.count - self.initial
        rate = f", {done / seconds:.1f} {self.unit}/s" if seconds > 0 and done else ""
        total = f"/{self.total}" if self.total is not None else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(
            f"[{self.desc or 'progress'}] {self.count}{total} {self.unit} in {seconds:.1f}s{rate}{extra}",
            file=sys.stderr, flush=True,
        )


def progress(iterable: Iterable[T], **options: Any) -> Iterator[T]:
    """Iterate ``iterable`` under a :class:`Progress` (closed at the end)."""
    with Progress(iterable, **options) as bar:
        yield from bar


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
