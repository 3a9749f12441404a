"""Running a batch on Dask: client and local cluster, worker plugin and events, the step and
commit tasks, atomic publishing of a finished case, the run lock, :func:`runBatch` and ``summary.csv``."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import __version__
from ..core.errors import InputError, MedAnalysisError, OperationCancelled
from ..core.progress import CancelToken, ProgressCallback, ProgressReporter, atomic_output
from .fingerprint import CASE_FILE, caseFingerprint, finishedRecord, readCaseRecord
from .manifest import BASE_COLUMNS, CaseSpec, caseParameters, knownColumns, readManifest
from .steps import STEPS, StepFunction, resolveSteps

SUMMARY_COLUMNS = ("case_id", "status", "seconds", "error")
WORK_DIR = ".work"
LOCK_FILE = ".batch.lock"
EVENT_TOPIC = "medanalysis-batch"
DEFAULT_CASE_TIMEOUT_S = 7200.0
THREAD_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                      "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "MEDANALYSIS_THREADS")
# glibc malloc settings for local workers (read at process start, hence Dask's pre-spawn
# environment). Dask's default MALLOC_TRIM_THRESHOLD_ of 64 KiB returns freed memory to the
# kernel at once; a step allocates and frees hundreds of MB per case (volumes, network
# activations), so every allocation faults its pages in again: a segment step spent 2.3 s of
# 9 s in the kernel that way (865k page faults) against 1.1 s (321k) with freed memory kept for
# reuse. Dask's memory limit still restarts a worker that grows too large.
MALLOC_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


# --- worker side ------------------------------------------------------------------------------

class StepFailed(RuntimeError):
    """Unexpected error in a step (Dask retries it); the message names the step."""


def threadEnvironment(threads: int = 1) -> dict:
    return {name: str(threads) for name in THREAD_ENVIRONMENT}


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency; keeps the module importable
    _WorkerPlugin = object


class ThreadLimitPlugin(_WorkerPlugin):
    """Sets the per-step library thread count on every worker (also ones that join later)."""

    name = "medanalysis-thread-limit"

    def __init__(self, threads: int = 1):
        self.threads = int(threads)

    def setup(self, worker) -> None:
        os.environ.update(threadEnvironment(self.threads))
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self.threads)
        import sys

        if "torch" in sys.modules:  # otherwise OMP_NUM_THREADS applies when it is imported
            sys.modules["torch"].set_num_threads(self.threads)
        from ..lean_monai import import_monai

        import_monai()  # a worker process of our own: the lean import is safe here


def _currentWorker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _logEvent(message: dict) -> None:
    worker = _currentWorker()
    if worker is not None:
        worker.log_event(EVENT_TOPIC, {**message, "pid": os.getpid(), "worker": worker.address})


def runCaseStep(state: dict, stepName: str, function: StepFunction, case: CaseSpec, parameters: dict) -> dict:
    """Dask task: one step of one case, in a fresh attempt folder; returns the updated state."""
    if state.get("error"):
        return state
    _logEvent({"event": "start", "case": case.caseId, "step": stepName})
    started = time.perf_counter()
    attemptDir = Path(state["work"]) / f"{stepName}-{uuid.uuid4().hex[:12]}"
    attemptDir.mkdir(parents=True)
    try:
        result = function(case, dict(state["artifacts"]), dict(parameters), attemptDir) or {}
    except MedAnalysisError as error:  # bad input: the same on every attempt, so no retry
        return {**state, "error": f"{stepName}: {error}",
                "seconds": {**state["seconds"], stepName: round(time.perf_counter() - started, 3)}}
    except Exception as error:  # noqa: BLE001 - Dask retries it; the message keeps the step name
        raise StepFailed(f"{stepName}: {type(error).__name__}: {' '.join(str(error).split())}") from error
    outputs = {name: str(path) for name, path in (result.get("outputs") or {}).items()}
    worker = _currentWorker()
    return {**state,
            "workers": {**state["workers"], stepName: worker.address if worker is not None else "local"},
            "artifacts": {**state["artifacts"], **outputs},
            "outputs": {**state["outputs"], stepName: outputs},
            "metrics": {**state["metrics"], **(result.get("metrics") or {})},
            "seconds": {**state["seconds"], stepName: round(time.perf_counter() - started, 3)}}


def _linkOrCopy(source: "str | os.PathLike", target: "str | os.PathLike") -> None:
    """Hard link (same file system: no copy), else copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _gather(source: Path, staging: Path) -> bool:
    """Put a step's output file or folder (and a file's provenance sidecar) into ``staging``."""
    target = staging / source.name
    if target.exists() or not source.exists():
        return False
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_linkOrCopy)
    else:
        _linkOrCopy(source, target)
    return True


def commitCase(state: dict, case: CaseSpec, destination: str, fingerprint: str, parts: dict, runId: str) -> dict:
    """Dask task: assemble the case's files and rename them into ``destination`` atomically.

    Returns the summary row. A failed case leaves ``destination`` as it was.
    """
    seconds = round(sum(state["seconds"].values()), 3)
    failed = {"case_id": case.caseId, "status": "failed", "seconds": seconds, "metrics": state["metrics"]}
    if state.get("error"):
        return {**failed, "error": state["error"]}
    from ..core.provenance import sidecar_path

    staging = Path(state["work"]) / f"commit-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    files, outputs = [], {}
    for stepName, stepOutputs in state["outputs"].items():
        outputs[stepName] = {name: Path(path).name for name, path in stepOutputs.items()}
        for path in stepOutputs.values():
            for source in (Path(path), sidecar_path(path)):
                if _gather(source, staging):
                    files.append(source.name)
    produced = {str(p) for o in state["outputs"].values() for p in o.values()}
    artifacts = {name: Path(path).name for name, path in state["artifacts"].items() if str(path) in produced}
    record = {"software": "MedAnalysis", "version": __version__, "case_id": case.caseId, "status": "ok",
              "fingerprint": fingerprint, "fingerprint_parts": parts, "run_id": runId, "steps": parts["steps"],
              "artifacts": artifacts, "outputs": outputs, "files": files, "metrics": state["metrics"],
              "seconds": {**state["seconds"], "total": seconds}, "workers": state["workers"],
              "completed_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "research_use_only": True}
    (staging / CASE_FILE).write_text(json.dumps(record, indent=2))
    try:
        outcome = publishCase(staging, Path(destination), fingerprint, runId)
    except InputError as error:
        return {**failed, "error": f"commit: {error}"}
    return {"case_id": case.caseId, "status": "ok", "seconds": seconds, "error": "", "metrics": state["metrics"],
            "commit": outcome}


def publishCase(staging: Path, destination: Path, fingerprint: str, runId: str) -> str:
    """Rename ``staging`` onto ``destination``: 'committed', 'replaced' (an outdated result was
    swapped out) or 'duplicate' (this run already committed it: the copy is discarded)."""
    for _ in range(5):
        try:
            os.rename(staging, destination)  # fails while destination is a non-empty folder
            return "committed"
        except OSError:
            if not destination.exists():
                continue
        existing = readCaseRecord(destination)
        if existing is None:
            shutil.rmtree(staging, ignore_errors=True)
            raise InputError(destination, "exists and is not a batch case folder (no case.json): move it away")
        if existing.get("run_id") == runId and existing.get("fingerprint") == fingerprint:
            shutil.rmtree(staging, ignore_errors=True)  # second finisher of a task that ran twice
            return "duplicate"
        aside = destination.parent / WORK_DIR / runId / f"replaced-{destination.name}-{uuid.uuid4().hex[:8]}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(destination, aside)
        except FileNotFoundError:
            continue
        try:
            os.rename(staging, destination)
        except OSError:
            try:
                os.rename(aside, destination)  # put the earlier result back unless another finisher won
            except OSError:
                pass
            continue
        shutil.rmtree(aside, ignore_errors=True)
        return "replaced"
    raise StepFailed(f"{destination}: could not move the finished case into place")


# --- driver -------------------------------------------------------------------------------------

@dataclasses.dataclass
class BatchOptions:
    """How to run a batch (the CLI options of ``medanalysis batch``)."""

    steps: Optional[Sequence[str]] = None      # default: every available step, pipeline order
    scheduler: Optional[str] = None            # tcp://HOST:PORT of an existing cluster
    workers: Optional[int] = None              # local cluster: worker processes (default: cores / threads)
    threadsPerWorker: int = 1                  # local cluster: tasks run at once per worker
    memoryLimit: Optional[str] = "auto"        # local cluster: per worker, e.g. "4GB"; "0" for none
    defaults: dict = dataclasses.field(default_factory=dict)   # column -> value for empty cells
    caseTimeoutS: Optional[float] = DEFAULT_CASE_TIMEOUT_S     # per case, from its first step's start
    retries: int = 2                           # re-runs of a step after an unexpected exception
    connectTimeoutS: float = 60.0              # waiting for the scheduler and a first worker
    dashboardAddress: str = ":8787"            # local cluster (a free port is used when taken)


def _pidAlive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def acquireLock(outDir: Path) -> Path:
    """One batch run per OUT_DIR at a time (a lock left by a dead process on this host is taken over)."""
    lock = outDir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text())
            except (OSError, ValueError):
                other = {}
            if other.get("host") == me["host"] and not _pidAlive(other.get("pid", -1)):
                lock.unlink(missing_ok=True)
                continue
            raise InputError(outDir, f"another medanalysis batch (pid {other.get('pid')} on {other.get('host')}) is "
                                     f"writing here; wait for it, or delete {LOCK_FILE} if it is gone") from None
        with os.fdopen(descriptor, "w") as stream:
            json.dump(me, stream)
        return lock
    raise InputError(outDir, f"could not take {LOCK_FILE}")


def writeSummary(rows: list[dict], path: Path) -> Path:
    """``summary.csv``: case_id,status,seconds,error then the metric columns (first-seen order)."""
    metricColumns: list = []
    for row in rows:
        metricColumns.extend(k for k in row.get("metrics", {}) if k not in metricColumns)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow([*SUMMARY_COLUMNS, *metricColumns])
            for row in rows:
                metrics = row.get("metrics", {})
                writer.writerow([row["case_id"], row["status"], f"{float(row.get('seconds') or 0):.3f}",
                                 row.get("error", ""), *(metrics.get(k, "") for k in metricColumns)])
    return path


class _Tracker:
    """Start events from the workers: when each case began (for timeouts) and what runs now."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started: dict = {}
        self.running: dict = {}

    def __call__(self, event) -> None:
        message = event[1] if isinstance(event, tuple) else event
        if not isinstance(message, dict) or message.get("event") != "start":
            return
        with self.lock:
            self.started.setdefault(message["case"], time.monotonic())
            self.running[message["case"]] = message["step"]


def _openClient(options: BatchOptions, log: Callable[[str], None], scratch: Optional[Path] = None):
    """(client, cluster or None) for the options: an existing scheduler or a new LocalCluster whose
    workers keep their scratch space and lock files in ``scratch`` (removed with the run's work folder)."""
    import logging

    from distributed import Client, LocalCluster

    if options.scheduler:
        for name, value, default in (("--workers", options.workers, None), ("--threads-per-worker",
                                     options.threadsPerWorker, 1), ("--memory-limit", options.memoryLimit, "auto")):
            if value not in (default, None):
                log(f"note: {name} applies to the local cluster only; ignored with --scheduler")
        try:
            client = Client(options.scheduler, timeout=options.connectTimeoutS)
        except (OSError, TimeoutError) as error:
            raise InputError("--scheduler", f"cannot reach the Dask scheduler at {options.scheduler} ({error})") from None
        return client, None
    threads = int(options.threadsPerWorker or 1)
    workers = options.workers if options.workers is not None else max(1, (os.cpu_count() or 1) // threads)
    import dask

    spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **MALLOC_ENVIRONMENT}
    settings = {"distributed.nanny.pre-spawn-environ": spawn}
    if scratch is not None:  # the scheduler's scratch and lock files too, not only the workers'
        settings["temporary-directory"] = str(scratch)
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=threads, processes=True,
                               memory_limit=_memoryLimit(options.memoryLimit),
                               local_directory=str(scratch) if scratch is not None else None,
                               dashboard_address=options.dashboardAddress, silence_logs=logging.ERROR,
                               env=threadEnvironment(1))
    return Client(cluster), cluster


def _memoryLimit(value: Optional[str]) -> "str | int | float":
    """Dask memory limit: 'auto', bytes ('4GB', '512MiB'), a fraction of RAM ('0.5') or 0 (none)."""
    from dask.utils import parse_bytes

    text = str(value if value not in (None, "") else "auto").strip()
    if text.lower() == "auto":
        return "auto"
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if number < 0:
            raise InputError("--memory-limit", f"must not be negative, got '{text}'")
        return number if 0 < number <= 1 else int(number)
    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise InputError("--memory-limit", f"expected a size such as 4GB, 0.5 (of RAM), 0 (none) or auto, "
                                           f"got '{text}'") from None


def checkOptions(options: BatchOptions) -> None:
    """Refuse bad numbers before anything is read or written."""
    if options.threadsPerWorker is not None and int(options.threadsPerWorker) < 1:
        raise InputError("--threads-per-worker", f"must be at least 1, got {options.threadsPerWorker}")
    if options.workers is not None and int(options.workers) < 1:
        raise InputError("--workers", f"must be at least 1, got {options.workers}")
    if options.retries < 0:
        raise InputError("--retries", f"must not be negative, got {options.retries}")
    if options.caseTimeoutS is not None and options.caseTimeoutS < 0:
        raise InputError("--timeout", f"must not be negative, got {options.caseTimeoutS}")
    if options.scheduler and "://" not in options.scheduler and ":" not in options.scheduler:
        raise InputError("--scheduler", f"expected an address such as tcp://HOST:8786, got '{options.scheduler}'")
    if not options.scheduler:
        _memoryLimit(options.memoryLimit)


def _gpuOffered(client) -> bool:
    workers = client.scheduler_info().get("workers", {})
    return any(float((w.get("resources") or {}).get("GPU", 0)) > 0 for w in workers.values())


def runBatch(manifest: "str | os.PathLike", outDir: "str | os.PathLike", options: Optional[BatchOptions] = None,
             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
             log: Optional[Callable[[str], None]] = None, registry: Optional[dict] = None) -> dict:
    """Run every case of ``manifest`` through the steps on Dask; write ``OUT_DIR/summary.csv``.

    Returns ``{"cases": [rows], "counts": {"ok", "failed", "skipped"}, "summary", "dashboard", ...}``.
    Raises InputError for a bad manifest or options (nothing is run) and OperationCancelled when
    cancelled (the summary then lists the unfinished cases as failed).
    """
    options = options or BatchOptions()
    registry = STEPS if registry is None else registry
    log = log or (lambda line: None)
    report = ProgressReporter(progress, cancel)
    startedAt = time.perf_counter()
    checkOptions(options)
    steps = resolveSteps(options.steps, registry)
    known = knownColumns(registry)
    for column in options.defaults:
        if column not in known or column in BASE_COLUMNS:
            raise InputError("--set", f"unknown parameter column '{column}' (known: {', '.join(known[3:])})")
    cases = readManifest(manifest, registry)
    manifestDir = Path(manifest).resolve().parent
    outDir = Path(outDir).absolute()
    if outDir.exists() and not outDir.is_dir():
        raise InputError(outDir, "output path exists and is not a folder")
    outDir.mkdir(parents=True, exist_ok=True)
    lock = acquireLock(outDir)
    runId = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    workRoot = outDir / WORK_DIR
    client = cluster = None
    rows: dict = {}
    result: dict = {"steps": steps, "dashboard": None, "scheduler": options.scheduler}
    try:
        if workRoot.exists():  # attempt folders of earlier runs that did not end cleanly
            shutil.rmtree(workRoot, ignore_errors=True)
        pending = []
        report(0.0, f"checking {len(cases)} cases (input hashes, finished results)")
        for case in cases:
            report.cancel.raise_if_cancelled()
            try:
                parameters = caseParameters(case, steps, registry, options.defaults, manifestDir)
                fingerprint, parts = caseFingerprint(case, steps, parameters, registry)
                destination = outDir / case.caseId
                finished = finishedRecord(destination, fingerprint)
                if finished is not None:
                    rows[case.caseId] = {"case_id": case.caseId, "status": "skipped", "seconds": 0.0, "error": "",
                                         "metrics": finished.get("metrics", {})}
                    continue
                if destination.exists() and readCaseRecord(destination) is None:
                    raise InputError(destination, "exists and is not a batch case folder (no case.json): move it away")
            except InputError as error:
                rows[case.caseId] = {"case_id": case.caseId, "status": "failed", "seconds": 0.0, "error": str(error),
                                     "metrics": {}}
                continue
            pending.append((case, parameters, fingerprint, parts))
        if pending:
            client, cluster = _openClient(options, log, scratch=workRoot / runId / "dask")
            result["dashboard"] = client.dashboard_link if client.scheduler_info().get("services", {}).get(
                "dashboard") else None
            log(f"dask dashboard: {result['dashboard'] or 'not available (pip install bokeh>=3.1)'}")
            try:
                client.wait_for_workers(1, timeout=options.connectTimeoutS)
            except TimeoutError:
                raise InputError("--scheduler", f"no Dask worker joined within {options.connectTimeoutS:.0f} s") from None
            client.register_plugin(ThreadLimitPlugin(1))
            tracker = _Tracker()
            client.subscribe_topic(EVENT_TOPIC, tracker)
            gpu = _gpuOffered(client)
            result["gpu_resource"] = gpu
            result["workers"] = len(client.scheduler_info().get("workers", {}))
            log(f"{len(pending)} case(s) to run on {result['workers']} worker(s)"
                f"{' (GPU resource in use for segmentation)' if gpu else ''}; {len(rows)} done or failed upfront")
            _runPending(client, pending, steps, registry, outDir, runId, options, gpu, tracker, rows, len(cases),
                        report)
    except (OperationCancelled, KeyboardInterrupt):
        for case in cases:
            rows.setdefault(case.caseId, {"case_id": case.caseId, "status": "failed", "seconds": 0.0,
                                          "error": "interrupted before the case finished", "metrics": {}})
        writeSummary([rows[c.caseId] for c in cases], outDir / "summary.csv")
        raise
    finally:
        if client is not None:
            try:
                client.close(timeout=10)
            except Exception:  # noqa: BLE001 - closing a broken connection must not hide the result
                pass
        if cluster is not None:
            try:
                cluster.close(timeout=20)
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(workRoot / runId, ignore_errors=True)
        try:
            if workRoot.exists() and not any(workRoot.iterdir()):
                workRoot.rmdir()
        except OSError:
            pass
        lock.unlink(missing_ok=True)
    ordered = [rows[c.caseId] for c in cases]
    summary = writeSummary(ordered, outDir / "summary.csv")
    counts = {status: sum(r["status"] == status for r in ordered) for status in ("ok", "failed", "skipped")}
    report(1.0, f"{len(cases)} cases: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped")
    result.update(cases=[{k: v for k, v in r.items() if k != "commit"} for r in ordered], counts=counts,
                  summary=str(summary), output_dir=str(outDir), seconds=round(time.perf_counter() - startedAt, 3))
    return result


def _runPending(client, pending, steps, registry, outDir, runId, options, gpu, tracker, rows, total, report) -> None:
    """Submit each case as a chain of step tasks plus a commit task; collect rows as they finish."""
    from distributed import wait

    finals = {}
    for case, parameters, fingerprint, parts in pending:
        state: Any = {"case": case.caseId, "work": str(outDir / WORK_DIR / runId / case.caseId),
                      "artifacts": {"image": case.input, **({"followup": case.followup} if case.followup else {})},
                      "outputs": {}, "metrics": {}, "seconds": {}, "workers": {}, "error": None}
        for name in steps:
            step = registry[name]
            state = client.submit(runCaseStep, state, name, step.function, case, parameters,
                                  key=f"{name}-{case.caseId}-{runId}", retries=options.retries,
                                  resources={"GPU": 1} if (gpu and step.usesGpu) else None)
        finals[client.submit(commitCase, state, case, str(outDir / case.caseId), fingerprint, parts, runId,
                             key=f"commit-{case.caseId}-{runId}", retries=options.retries)] = case
        del state
    limit = options.caseTimeoutS if options.caseTimeoutS and options.caseTimeoutS > 0 else None
    while finals:
        try:
            done, _ = wait(list(finals), timeout=0.5, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for future in done:
            case = finals.pop(future)
            rows[case.caseId] = _rowOf(future, case, tracker)
            future.release()
        if limit is not None:
            now = time.monotonic()
            with tracker.lock:
                late = [f for f, c in finals.items() if c.caseId in tracker.started
                        and now - tracker.started[c.caseId] > limit]
            for future in late:
                case = finals.pop(future)
                client.cancel(future)
                rows[case.caseId] = {"case_id": case.caseId, "status": "failed", "seconds": round(limit, 3),
                                     "error": f"timed out after {limit:.0f} s (step "
                                              f"{tracker.running.get(case.caseId, '?')} still running)", "metrics": {}}
        finished = list(rows.values())
        with tracker.lock:
            running = sum(1 for c in finals.values() if c.caseId in tracker.started)
        report(len(finished) / total, f"{len(finished)}/{total} cases done "
               f"({sum(r['status'] == 'ok' for r in finished)} ok, {sum(r['status'] == 'failed' for r in finished)} "
               f"failed, {sum(r['status'] == 'skipped' for r in finished)} skipped), {running} in progress")


def _rowOf(future, case: CaseSpec, tracker: _Tracker) -> dict:
    with tracker.lock:
        began = tracker.started.get(case.caseId)
    elapsed = round(time.monotonic() - began, 3) if began else 0.0
    if future.status == "finished":
        try:
            return future.result(timeout=60)
        except Exception as error:  # noqa: BLE001 - the row records it
            return {"case_id": case.caseId, "status": "failed", "seconds": elapsed,
                    "error": f"result not retrievable: {type(error).__name__}: {error}", "metrics": {}}
    if future.status == "error":
        error = future.exception(timeout=60)
        if type(error).__name__ == "KilledWorker":
            message = f"its worker died repeatedly (KilledWorker: {getattr(error, 'task', '')})"
        else:
            message = " ".join(str(error).split()) or type(error).__name__
            if not isinstance(error, (StepFailed, MedAnalysisError)):
                message = f"{type(error).__name__}: {message}"
        return {"case_id": case.caseId, "status": "failed", "seconds": elapsed, "error": message, "metrics": {}}
    return {"case_id": case.caseId, "status": "failed", "seconds": elapsed,
            "error": f"task {future.status} (worker or scheduler lost)", "metrics": {}}
