"""``medanalysis batch MANIFEST.csv -o OUT_DIR``: a cohort through the pipeline steps on Dask
(a local cluster by default, an existing one with ``--scheduler``); resumable, see
:mod:`MedAnalysisLib.batch` for the manifest columns and the output layout."""

from __future__ import annotations

import sys
import time

from ..cli import EXIT_CASES_FAILED, EXIT_OK, StderrProgress, emit


class TerminalProgressBar:
    """``progress(fraction, message)`` drawn as one updating bar on an interactive stderr."""

    def __init__(self, width: int = 30):
        self.width = width
        self.started = time.perf_counter()
        self.drawn = ""

    def __call__(self, fraction: float, message: str) -> None:
        filled = int(round(self.width * min(max(fraction, 0.0), 1.0)))
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {message}  {time.perf_counter() - self.started:6.1f}s"
        if line != self.drawn:
            self.drawn = line
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()

    def log(self, text: str) -> None:
        """A line above the bar (the bar is redrawn by the next report)."""
        sys.stderr.write("\r\x1b[K" + text + "\n" + ("\r" + self.drawn if self.drawn else ""))
        sys.stderr.flush()

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = ""


def _defaults(pairs) -> dict:
    from ..core.errors import InputError

    values = {}
    for pair in pairs or []:
        column, sep, value = pair.partition("=")
        if not sep or not column.strip():
            raise InputError("--set", f"expected COLUMN=VALUE, got '{pair}'")
        values[column.strip()] = value.strip()
    return values


def register(add) -> None:
    parser = add("batch", run, "run a cohort (manifest CSV) through the pipeline on Dask, resumable")
    parser.add_argument("manifest", metavar="MANIFEST.csv",
                        help="columns case_id,input[,followup] plus optional parameter columns "
                             "(preset, denoise, normalize, spacing, model, device, ...)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                        help="outputs go to OUT_DIR/<case_id>/ and OUT_DIR/summary.csv")
    parser.add_argument("--steps", default=None, metavar="import,enhance,register,segment,monitor",
                        help="steps to run, in this order (default: every available step)")
    parser.add_argument("--scheduler", default=None, metavar="ADDR",
                        help="address of an existing Dask scheduler (tcp://HOST:PORT); default: a local cluster")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="local cluster: worker processes (default: CPU cores / threads per worker)")
    parser.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                        help="local cluster: cases run at once by each worker, each single-threaded (default 1)")
    parser.add_argument("--memory-limit", default="auto", metavar="SIZE",
                        help="local cluster: memory per worker, e.g. 4GB (default: RAM / workers; 0: none)")
    parser.add_argument("--set", action="append", default=[], metavar="COLUMN=VALUE",
                        help="value of a parameter column for cases that leave it empty (repeatable)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="per case, from the start of its first step (default 7200; 0: none)")
    parser.add_argument("--retries", type=int, default=2, metavar="N",
                        help="re-runs of a step after an unexpected error (bad input is not retried)")


def run(args) -> int:
    from ..batch import DEFAULT_CASE_TIMEOUT_S, BatchOptions, runBatch

    options = BatchOptions(steps=args.steps, scheduler=args.scheduler, workers=args.workers,
                           threadsPerWorker=args.threads_per_worker, memoryLimit=args.memory_limit,
                           defaults=_defaults(args.set),
                           caseTimeoutS=DEFAULT_CASE_TIMEOUT_S if args.timeout is None else args.timeout,
                           retries=max(0, args.retries))
    bar = TerminalProgressBar() if sys.stderr.isatty() and not args.json else None
    progress = bar or StderrProgress(quiet=args.json)

    def log(line: str) -> None:
        if args.json and not line.startswith("dask dashboard"):
            return
        if bar is not None:
            bar.log(line)
        else:
            print(line, file=sys.stderr, flush=True)

    try:
        result = runBatch(args.manifest, args.output, options, progress=progress, log=log)
    finally:
        if bar is not None:
            bar.close()

    def human(r: dict) -> str:
        c = r["counts"]
        lines = [f"{len(r['cases'])} cases: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped "
                 f"in {r['seconds']} s; summary: {r['summary']}"]
        lines.extend(f"  failed {row['case_id']}: {row['error']}" for row in r["cases"] if row["status"] == "failed")
        return "\n".join(lines)

    emit(result, args.json, human)
    return EXIT_CASES_FAILED if result["counts"]["failed"] else EXIT_OK
