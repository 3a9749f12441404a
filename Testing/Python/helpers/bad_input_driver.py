"""Run many ``medanalysis`` invocations in one process, each as the real CLI would run it.

    python bad_input_driver.py JOBS.json [RECORDS.jsonl]

JOBS.json::

    {"groups": [{"id": "truncated.nii", "invocations": [{"id": "info", "argv": ["info", "F", "--json"]}, ...]}],
     "timeout_s": 120, "rlimit_as": null}

Each invocation calls ``MedAnalysisLib.cli.main(argv)`` the way ``python -m MedAnalysisLib.cli``
does (``sys.exit(main())``): SystemExit is caught and mapped like the interpreter maps it, an
exception escaping ``main`` prints its traceback and gives 1. File descriptors 1 and 2 are
redirected to files for the duration of the invocation, so what C++ code (ITK, GDCM) prints is
captured as well, exactly as a subprocess's stdout/stderr would be.

Per invocation: ``rc``, ``stdout``, ``stderr``, ``seconds`` and ``peak_mb`` (the process's peak
resident memory during that invocation: VmHWM, reset through /proc/self/clear_refs before each
invocation; when that is not possible, the process's running maximum and ``peak_exact`` false).

The full result list is printed as JSON on stdout at the end. With RECORDS.jsonl, a ``start``
record is appended (and flushed) before each invocation and an ``end`` record after it, so that
when the process dies (signal, abort, hang killed by the per-invocation timeout) the caller knows
which invocation was running and can read its stderr file.

The parent side (imported by cli/test_bad_inputs.py and core/test_fuzz_headers.py): :func:`run_driver`
runs job groups through this script and restarts it after an invocation it died in,
:func:`contract_problems` checks one result against the bad-input contract (exit 0 or 2; when 2,
one line naming the file; no traceback; bounded memory), :func:`files_containing` finds a token in
output files (gzip and NRRD bodies decompressed).
"""

from __future__ import annotations

import faulthandler
import importlib.util
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

# run as a script (the child process) as well as imported: no ``helpers.paths`` import here
REPO = Path(__file__).resolve().parents[3]  # Testing/Python/helpers/bad_input_driver.py
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DRIVER = Path(__file__).resolve()
GENERATOR = REPO / "Testing" / "Data" / "bad" / "make_bad_corpus.py"
MEMORY_LIMIT_MB = 1536  # 1.5 GB peak resident memory, except segment runs that succeed (model)
RLIMIT_AS = 6 << 30  # safety net on a shared machine: a bomb fails to allocate (MemoryError) instead of swapping the host
INVOCATION_TIMEOUT_S = 120


def _vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", handle.read())
        if match:
            return int(match.group(1)) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _exit_code(code) -> tuple:
    """What the interpreter does with ``sys.exit(code)``: (exit status, text it prints to stderr)."""
    if code is None:
        return 0, ""
    if isinstance(code, bool):
        return int(code), ""
    if isinstance(code, int):
        return code & 0xFF, ""
    return 1, f"{code}\n"


def run_invocation(argv: list, workdir: Path, number: int, records, group_id: str, invocation_id: str,
                   timeout_s: float) -> dict:
    from MedAnalysisLib import cli

    out_path = workdir / f"{number:05d}.stdout"
    err_path = workdir / f"{number:05d}.stderr"
    if records is not None:
        records.write(json.dumps({"event": "start", "group": group_id, "id": invocation_id, "argv": argv,
                                  "stdout_file": str(out_path), "stderr_file": str(err_path)}) + "\n")
        records.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    exact = _reset_peak()
    if timeout_s:
        faulthandler.dump_traceback_later(timeout_s, exit=True)  # a hang ends the process (rc 1), traceback on fd 2
    started = time.perf_counter()
    try:
        try:
            rc, text = _exit_code(cli.main(list(argv)))
        except SystemExit as stop:
            rc, text = _exit_code(stop.code)
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            traceback.print_exc()
            rc, text = 1, ""
        if text:
            sys.stderr.write(text)
    finally:
        seconds = time.perf_counter() - started
        if timeout_s:
            faulthandler.cancel_dump_traceback_later()
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - a closed/broken stdout must not hide the result
            pass
        try:
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
    peak = _vm_hwm_mb()
    result = {"group": group_id, "id": invocation_id, "argv": argv, "rc": rc, "seconds": round(seconds, 3),
              "peak_mb": round(peak, 1), "peak_exact": exact,
              "stdout": out_path.read_text(errors="replace"), "stderr": err_path.read_text(errors="replace")}
    if records is not None:
        records.write(json.dumps({"event": "end", **result}) + "\n")
        records.flush()
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: bad_input_driver.py JOBS.json [RECORDS.jsonl]", file=sys.stderr)
        return 2
    jobs = json.loads(Path(argv[0]).read_text())
    limit = jobs.get("rlimit_as")
    if limit:  # a safety net against memory bombs on a shared machine (an allocation past it fails)
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    timeout_s = float(jobs.get("timeout_s") or 0)
    records = open(argv[1], "a", buffering=1) if len(argv) == 2 else None
    crash_log = None
    if records is not None:
        crash_log = open(argv[1] + ".faults", "a")
        faulthandler.enable(crash_log)  # fatal signals: the Python stack goes beside the records
    stdout = os.fdopen(os.dup(1), "w")  # the JSON result goes to the real stdout
    results = []
    number = 0
    with tempfile.TemporaryDirectory(prefix="bad-input-driver-") as tmp:
        workdir = Path(jobs.get("workdir") or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for group in jobs["groups"]:
            for invocation in group["invocations"]:
                number += 1
                results.append(run_invocation(invocation["argv"], workdir, number, records, group["id"],
                                              invocation["id"], timeout_s))
        stdout.write(json.dumps(results))
        stdout.flush()
    if records is not None:
        records.close()
    return 0


# --- the parent side (used by the tests) ------------------------------------------------------

def load_generator():
    spec = importlib.util.spec_from_file_location("make_bad_corpus", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_bad_corpus", module)
    spec.loader.exec_module(module)
    return module


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except (ValueError, TypeError):
        return "?"


def run_driver(groups: list, workdir: Path, overall_timeout_s: float = 1800,
               invocation_timeout_s: float = INVOCATION_TIMEOUT_S) -> dict:
    """Run ``groups`` ([{"id", "invocations": [{"id", "argv"}]}]) through the driver.

    Returns {(group id, invocation id): result}. An invocation during which the child died gets
    ``died: True`` and ``rc``: the child's return code (negative: the signal), ``stderr``: what it
    had printed plus the faulthandler dump; ``hung: seconds`` when it ran past
    ``invocation_timeout_s`` (the driver's faulthandler ends it). The child is restarted after it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pending = [(group["id"], invocation) for group in groups for invocation in group["invocations"]]
    results = {}
    env = {k: v for k, v in os.environ.items() if k != "MEDANALYSIS_DEBUG"}
    attempt = 0
    while pending:
        attempt += 1
        jobs_path = workdir / f"jobs-{attempt}.json"
        records_path = workdir / f"records-{attempt}.jsonl"
        regrouped = []
        for group_id, invocation in pending:
            if not regrouped or regrouped[-1]["id"] != group_id:
                regrouped.append({"id": group_id, "invocations": []})
            regrouped[-1]["invocations"].append(invocation)
        jobs_path.write_text(json.dumps({"groups": regrouped, "rlimit_as": RLIMIT_AS,
                                         "timeout_s": invocation_timeout_s,
                                         "workdir": str(workdir / f"io-{attempt}")}))
        try:
            child = subprocess.run([sys.executable, str(DRIVER), str(jobs_path), str(records_path)], cwd=REPO,
                                   env=env, capture_output=True, text=True, timeout=overall_timeout_s)
            returncode, child_err = child.returncode, child.stderr
        except subprocess.TimeoutExpired as expired:
            returncode, child_err = "timeout", (expired.stderr or b"").decode(errors="replace") \
                if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        started, ended = None, set()
        if records_path.exists():
            for line in records_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                key = (record["group"], record["id"])
                if record["event"] == "start":
                    started = record
                else:
                    results[key] = {k: v for k, v in record.items() if k != "event"}
                    ended.add(key)
        pending = [(g, inv) for g, inv in pending if (g, inv["id"]) not in results]
        if not pending:
            break
        if started is None or (started["group"], started["id"]) in results:
            # died before starting the next invocation: blame the next pending one
            group_id, invocation = pending[0]
            started = {"group": group_id, "id": invocation["id"], "argv": invocation["argv"], "stderr_file": ""}
        key = (started["group"], started["id"])
        stderr = ""
        if started.get("stderr_file") and Path(started["stderr_file"]).exists():
            stderr = Path(started["stderr_file"]).read_text(errors="replace")
        faults = Path(str(records_path) + ".faults")
        if faults.exists():
            stderr += faults.read_text(errors="replace")
        stderr += child_err or ""
        hung = invocation_timeout_s if ("Timeout (" in stderr or returncode == "timeout") else None
        results[key] = {"group": key[0], "id": key[1], "argv": started["argv"], "rc": returncode, "died": True,
                        "hung": hung, "seconds": hung, "peak_mb": None, "stdout": "", "stderr": stderr}
        pending = [(g, inv) for g, inv in pending if (g, inv["id"]) != key]
    return results


def stderr_lines(text: str) -> list:
    return [line for line in text.strip().splitlines() if line.strip() and not line.startswith("[")]


def first_line(result: dict) -> str:
    text = result.get("stderr") or ""
    if "Traceback" in text:
        tail = [line for line in text.strip().splitlines() if line.strip()]
        return "traceback: " + " | ".join(tail[-3:])
    lines = stderr_lines(text)
    return lines[0][:300] if lines else "(no stderr)"


def describe_rc(rc) -> str:
    if isinstance(rc, int) and rc < 0:
        return f"{rc} ({_signal_name(rc)})"
    return str(rc)


def contract_problems(result: dict, basename: str, memory_exempt: bool = False) -> list:
    """Problems with one invocation: exit 0/2 only, one clean line naming the file when 2, no
    traceback, no death, bounded memory."""
    problems = []
    rc, err = result["rc"], result.get("stderr") or ""
    if result.get("hung"):
        problems.append(f"hung: no result after {result['hung']:.0f} s (ended by the driver's timeout)")
        return problems
    if result.get("died"):
        problems.append(f"process died (rc {describe_rc(rc)}) during it: {first_line(result)}")
        return problems
    if rc not in (0, 2):
        problems.append(f"exit {describe_rc(rc)}: {first_line(result)}")
    if "Traceback" in err:
        problems.append(f"traceback on stderr (exit {rc}): {first_line(result)}")
    if rc == 2:
        lines = stderr_lines(err)
        if len(lines) != 1:
            problems.append(f"exit 2 with {len(lines)} non-progress stderr lines: {' | '.join(lines)[:400]}")
        elif basename not in lines[0]:
            problems.append(f"exit 2, the error line does not name {basename}: {lines[0][:300]}")
        if "internal error" in err:
            problems.append(f"exit 2 but 'internal error' on stderr: {first_line(result)}")
    peak = result.get("peak_mb")
    if peak is not None and peak > MEMORY_LIMIT_MB and not memory_exempt:
        problems.append(f"peak resident memory {peak:.0f} MB > {MEMORY_LIMIT_MB} MB (exit {rc}, "
                        f"{result.get('seconds')} s): {first_line(result)}")
    return problems


def blobs(data: bytes, limit: int = 512 << 20):
    """The bytes of an output file and, where it is compressed (gzip, NRRD gzip body), its content."""
    yield data
    if data[:2] == b"\x1f\x8b":
        try:
            yield zlib.decompressobj(47).decompress(data, limit)
        except zlib.error:
            pass
    if data[:4] == b"NRRD" and b"\n\n" in data[:1 << 16]:
        body = data[data.index(b"\n\n") + 2:]
        if body[:2] == b"\x1f\x8b" or body[:1] == b"\x78":
            try:
                yield zlib.decompressobj(47).decompress(body, limit)
            except zlib.error:
                pass


def files_containing(folder: Path, token: bytes) -> list:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(token in blob for blob in blobs(data)):
                found.append(path)
    return found


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file under ``folder`` (outputs of one invocation)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


if __name__ == "__main__":
    sys.exit(main())
