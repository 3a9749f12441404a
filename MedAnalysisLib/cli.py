"""``medanalysis``: the headless command-line entry point.

Exit codes: 0 ok; 1 internal error; 2 bad input (one line naming the file and the
problem); 3 batch finished but some cases failed. ``--json`` prints one JSON object on
stdout; human progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Callable, Optional, Sequence

from . import __version__, RESEARCH_USE_NOTICE
from .core.errors import InputError, OperationCancelled

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CASES_FAILED = 0, 1, 2, 3
NETWORK_COMMANDS = ("segment", "monitor", "demo", "batch", "models")
STAGED_COMMANDS = ("import", "enhance", "segment", "register", "brain-mask")  # several files, all or none
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                errno.ENAMETOOLONG, errno.EFBIG}


class StderrProgress:
    """``progress(fraction, message)`` printing one line per new message to stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.last = None
        self.started = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet or message == self.last:
            return
        self.last = message
        print(f"[{time.perf_counter() - self.started:6.1f}s {100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True)


def emit(result: dict, asJson: bool, human: Callable[[dict], str]) -> None:
    if asJson:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(human(result))


# --- parser -----------------------------------------------------------------------------------

def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medanalysis", description=f"MedAnalysis {__version__}: medical image "
                                     f"analysis, headless. {RESEARCH_USE_NOTICE}")
    parser.add_argument("--version", action="version", version=f"medanalysis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, handler, helpText: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helpText, description=helpText)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(handler=handler)
        return p

    for module in commandModules():
        module.register(add)
    return parser


def commandModules():
    """Each subcommand lives in MedAnalysisLib/commands/<name>.py with ``register(add)``."""
    import importlib

    from .commands import COMMANDS

    return [importlib.import_module(f".commands.{name}", __package__) for name in COMMANDS]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = buildParser()
    args = parser.parse_args(argv)
    if args.command in NETWORK_COMMANDS:  # a process of our own: the lean MONAI import is safe here
        from .lean_monai import import_monai

        import_monai()
    with contextlib.ExitStack() as stack:
        if args.command not in ("batch",):  # batch workers keep the terminal for their own logs
            stack.enter_context(quietNativeStderr())
        if not os.environ.get("MEDANALYSIS_DEBUG"):  # library warnings about odd headers: the one line says it
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
        return _run(args)


def _run(args) -> int:
    try:
        if args.command in STAGED_COMMANDS:  # all of the command's files or none of them
            from .core.progress import staged_outputs

            with staged_outputs():
                return args.handler(args)
        return args.handler(args)
    except InputError as error:
        print(f"medanalysis {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing left to tell it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:  # not a file-system refusal: a defect of ours
            return _internal(args, error)
        where = f"{error.filename}: " if error.filename else ""
        print(f"medanalysis {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OperationCancelled as error:
        print(f"medanalysis {args.command}: {error}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print(f"medanalysis {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - last resort: one line, traceback on request
        return _internal(args, error)


@contextlib.contextmanager
def quietNativeStderr():
    """C and C++ libraries (ITK, VTK, GDCM, libjpeg, nifticlib) write warnings straight to file
    descriptor 2, which would break the one-line error contract. While a command runs, Python's
    own stderr goes to a copy of the terminal and the native lines to a temporary file, shown
    only with MEDANALYSIS_DEBUG=1. Skipped when stderr is not the process's own (tests capturing
    it, Slicer's console)."""
    if os.environ.get("MEDANALYSIS_DEBUG") or sys.stderr is not sys.__stderr__:
        yield
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    pythonStderr = os.fdopen(os.dup(original), "w", buffering=1, encoding=sys.stderr.encoding,
                             errors="backslashreplace")
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = pythonStderr
        try:
            yield
        finally:
            pythonStderr.flush()
            sys.stderr = sys.__stderr__
            os.dup2(original, 2)
            os.close(original)
            pythonStderr.close()


def _internal(args, error: BaseException) -> int:
    if os.environ.get("MEDANALYSIS_DEBUG"):
        traceback.print_exception(error)
    print(f"medanalysis {args.command}: internal error: {type(error).__name__}: "
          f"{' '.join(str(error).split())}", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
