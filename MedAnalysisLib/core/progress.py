"""Progress reporting, cancellation and all-or-nothing output files.

Every long operation takes ``progress(fraction, message)`` and a :class:`CancelToken`.
Cancelling or failing leaves existing files untouched: outputs are written to a
temporary file in the destination folder and renamed into place only on success.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

from .errors import OperationCancelled


class ProgressCallback(Protocol):
    def __call__(self, fraction: float, message: str) -> None: ...


def no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignores reports."""


class CancelToken:
    """Thread-safe cancellation flag checked by long operations between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise OperationCancelled("operation cancelled by the user")


class ProgressReporter:
    """Maps the progress of sub-steps onto one overall fraction and checks cancellation."""

    def __init__(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                 start: float = 0.0, end: float = 1.0):
        self.progress = progress or no_progress
        self.cancel = cancel or CancelToken()
        self.start = start
        self.end = end

    def __call__(self, fraction: float, message: str) -> None:
        self.cancel.raise_if_cancelled()
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.progress(self.start + (self.end - self.start) * fraction, message)

    def sub(self, start: float, end: float) -> "ProgressReporter":
        """Reporter for a sub-step that covers [start, end] of this one."""
        span = self.end - self.start
        return ProgressReporter(self.progress, self.cancel, self.start + span * start, self.start + span * end)


def output_suffix(path: "str | os.PathLike") -> str:
    """Full extension of an image path, e.g. '.nii.gz' or '.seg.nrrd'."""
    name = Path(path).name.lower()
    for compound in (".seg.nrrd", ".nii.gz", ".tar.gz"):
        if name.endswith(compound):
            return compound
    return Path(path).suffix.lower()


@contextlib.contextmanager
def atomic_output(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the extension so that writers choosing a format by
    extension (SimpleITK, Slicer storage nodes) behave the same.  Inside
    :func:`staged_outputs` the rename waits until every output of the command is written.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{output_suffix(final)}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # only the unique name is reserved: writers then create a fresh file
    stage = _STAGE.get()
    published = False
    try:
        yield tmp
        if stage is not None:
            stage.append((tmp, final))
        else:
            os.replace(tmp, final)
        published = True
    finally:
        if not published and tmp.exists():
            tmp.unlink()


_STAGE: "contextvars.ContextVar[Optional[list]]" = contextvars.ContextVar("medanalysis_staged_outputs", default=None)


@contextlib.contextmanager
def staged_outputs() -> Iterator[None]:
    """Hold back every :func:`atomic_output` written inside; rename them all onto their final
    paths at the end, or remove them all when anything fails: a command that writes several
    files leaves every existing file as it was unless it succeeds as a whole."""
    pending: list = []
    token = _STAGE.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _STAGE.reset(token)
    for tmp, final in pending:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_outputs(paths: "list[str | os.PathLike]") -> Iterator[list[Path]]:
    """Like :func:`atomic_output` for several files that succeed or fail together."""
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_output(p)) for p in paths]
        yield tmps


Callback = Callable[[float, str], None]
