"""``medanalysis batch`` on Dask: manifest and fingerprints, a LocalCluster run that loses a
worker, resume after an interruption, parameter changes, bad cases, and a separately started
``dask scheduler`` + ``dask worker`` cluster on 127.0.0.1 (one worker offering a GPU resource).

Cases are the MNI T1 sample resampled to 3 mm (66x78x63) with a little noise; the model is a
tiny random MONAI UNet working at 3 mm, so each case takes about a second once a worker has
imported torch / MONAI / slicer (which is most of the time of these tests)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from helpers.paths import REPO, TESTS
from MedAnalysisLib import batch
from MedAnalysisLib.core.errors import InputError, OperationCancelled
from MedAnalysisLib.core.progress import CancelToken

WAIT_S = 90.0
# the Dask dashboard needs bokeh (dask[diagnostics]); without it the batch says it is not available
DASHBOARD = "http://" if importlib.util.find_spec("bokeh") else "not available"
# case.json metrics of the segment step (one per brain tissue segment present)
TISSUE_VOLUME_KEYS = ("cerebrospinal_fluid_ml", "gray_matter_ml", "white_matter_ml", "lesion_ml")


# --- data -------------------------------------------------------------------------------------

def tiny_config():
    from MedAnalysisLib.core.segment import netconfig

    config = netconfig.default_config()
    config["network"]["args"].update(channels=[4, 8], strides=[2], num_res_units=0, norm="BATCH")
    config["inference"]["roi_size"] = [32, 32, 32]
    config["preprocessing"]["spacing_mm"] = [3.0, 3.0, 3.0]
    return config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three distinct 3 mm cases (a, b, c), a corrupt file and a tiny model, in one folder."""
    import torch
    from safetensors.torch import save_file

    from MedAnalysisLib import resources
    from MedAnalysisLib.core.segment import netconfig

    folder = tmp_path_factory.mktemp("batch_data")
    t1 = sitk.ReadImage(str(resources.samplePath("mni152_t1.nii.gz")), sitk.sitkFloat32)
    grid = sitk.Resample(t1, [66, 78, 63], sitk.Transform(), sitk.sitkLinear, t1.GetOrigin(), [3.0, 3.0, 3.0],
                         t1.GetDirection(), 0.0, sitk.sitkFloat32)
    rng = np.random.default_rng(9)
    base = sitk.GetArrayFromImage(grid)
    for name in ("a", "b", "c"):
        array = base + (rng.normal(0, 3, base.shape) * (base > 0)).astype(np.float32)
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + bytes(rng.integers(0, 256, 4000, dtype=np.uint8)))
    config = tiny_config()
    torch.manual_seed(0)
    network = netconfig.build_network(config)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(folder / "tiny.safetensors"))
    (folder / "tiny.json").write_text(json.dumps(config))
    return folder


def write_manifest(path: Path, rows: list[dict]) -> Path:
    columns = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_summary(out: Path) -> dict:
    with open(out / "summary.csv", newline="") as stream:
        return {row["case_id"]: row for row in csv.DictReader(stream)}


def labels_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def check_case(out: Path, case_id: str, source: Path) -> dict:
    """A complete, readable case folder on the input's grid; returns its case.json."""
    folder = out / case_id
    record = json.loads((folder / "case.json").read_text())
    assert record["status"] == "ok" and record["case_id"] == case_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(record["files"] + ["case.json"])
    enhanced = sitk.ReadImage(str(folder / "enhanced.nii.gz"))
    original = sitk.ReadImage(str(source))
    assert enhanced.GetSize() == original.GetSize()
    assert np.allclose(enhanced.GetOrigin(), original.GetOrigin(), atol=1e-3)
    segmentation = sitk.ReadImage(str(folder / "segmentation.seg.nrrd"))
    labels = sitk.GetArrayFromImage(segmentation)
    assert labels.size > 0 and labels.max() >= 1
    # the tissue volumes in case.json are the labelled voxels of the written segmentation
    volumes = {k: v for k, v in record["metrics"].items() if k in TISSUE_VOLUME_KEYS}
    assert volumes, record["metrics"]
    voxel_ml = float(np.prod(segmentation.GetSpacing())) / 1000.0
    assert sum(volumes.values()) == pytest.approx(np.count_nonzero(labels) * voxel_ml, abs=0.01), volumes
    assert json.loads((folder / "segmentation.seg.nrrd.provenance.json").read_text())["operation"] == "segment"
    return record


def hold_step(case, inputs, params, outDir):
    """Test step: with hold=1, note this worker's PID and wait until the 'release' file exists."""
    if str(params.get("hold", "")) == "1":
        markers = Path(params["markers"])
        (markers / f"{case.caseId}-{os.getpid()}.pid").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not (markers / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return {"outputs": {}, "metrics": {}}


def registry_with_hold():
    """The batch steps plus ``hold`` (workers import it from this module: LocalCluster workers
    inherit sys.path, the external cluster gets this folder and Testing/Python on its PYTHONPATH)."""
    return {"hold": batch.BatchStep(hold_step, columns=("hold", "markers")), **batch.STEPS}


def wait_for(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class BatchThread(threading.Thread):
    """runBatch in a thread, so that the test can act on the workers while it runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(daemon=True)
        self.args, self.kwargs, self.result, self.error = args, kwargs, None, None

    def run(self):
        try:
            self.result = batch.runBatch(*self.args, **self.kwargs)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error


# --- fast checks: manifest, steps, fingerprints, atomic publish --------------------------------

def test_manifest_errors_name_the_file_and_row(tmp_path, data):
    good = write_manifest(tmp_path / "m.csv", [{"case_id": "a1", "input": "../a.nii.gz", "model": "tiny.safetensors"}])
    cases = batch.readManifest(good)
    assert cases[0].input == str((tmp_path / "../a.nii.gz").absolute()) and cases[0].parameters == {"model": "tiny.safetensors"}
    problems = {
        "missing.csv": None,
        "nocol.csv": "case_id,followup\nx,y\n",
        "dup.csv": "case_id,input\nx,a.nii.gz\nx,b.nii.gz\n",
        "badid.csv": "case_id,input\n../up,a.nii.gz\n",
        "unknown.csv": "case_id,input,modle\nx,a.nii.gz,t\n",
        "empty.csv": "case_id,input\n\n#c,a\n",
    }
    messages = {}
    for name, text in problems.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(InputError) as caught:
            batch.readManifest(tmp_path / name)
        messages[name] = str(caught.value)
        assert "\n" not in messages[name] and name in messages[name]
    assert "'input' is missing" in messages["nocol.csv"]
    assert "line 3" in messages["dup.csv"] and "repeats line 2" in messages["dup.csv"]
    assert "unknown column 'modle'" in messages["unknown.csv"]
    with pytest.raises(InputError, match="not available"):
        batch.resolveSteps("enhance,monitor", {k: v for k, v in batch.STEPS.items() if k != "monitor"})
    with pytest.raises(InputError, match="listed twice"):
        batch.resolveSteps("enhance,enhance", batch.STEPS)
    assert batch.resolveSteps(None, batch.STEPS)[:1] == ["import"]


def test_fingerprint_follows_inputs_parameters_and_model(tmp_path, data):
    shutil.copy(data / "a.nii.gz", tmp_path / "a.nii.gz")
    shutil.copy(data / "tiny.safetensors", tmp_path / "tiny.safetensors")
    shutil.copy(data / "tiny.json", tmp_path / "tiny.json")
    manifest = write_manifest(tmp_path / "m.csv", [{"case_id": "a", "input": "a.nii.gz", "denoise": "gaussian",
                                                    "model": "tiny.safetensors"}])
    steps = ["enhance", "segment"]

    def fingerprint(defaults=None, steps=steps):
        case = batch.readManifest(manifest)[0]
        parameters = batch.caseParameters(case, steps, batch.STEPS, defaults, tmp_path)
        return batch.caseFingerprint(case, steps, parameters, batch.STEPS)

    first, parts = fingerprint()
    assert parts["parameters"] == {"preset": "mri-brain-t1", "denoise": "gaussian",
                                   "model": str(tmp_path / "tiny.safetensors")}
    assert parts["hashes_sha256"]["model"] and parts["inputs_sha256"]["input"]
    assert fingerprint()[0] == first
    assert fingerprint({"preset": "none"})[0] != first                      # a parameter of a selected step
    assert fingerprint({"tta": "1"}, steps=["enhance"])[0] == fingerprint(steps=["enhance"])[0]  # unused column
    (tmp_path / "tiny.json").write_text((tmp_path / "tiny.json").read_text().replace('"BATCH"', '"INSTANCE"'))
    assert fingerprint()[0] != first                                        # model config changed
    sitk.WriteImage(sitk.ReadImage(str(data / "b.nii.gz")), str(tmp_path / "a.nii.gz"))
    changed = fingerprint()[0]
    assert changed != first                                                 # input content changed
    (tmp_path / "a.nii.gz").unlink()
    with pytest.raises(InputError, match="does not exist"):
        fingerprint()


def test_publish_is_atomic_and_second_finisher_discards(tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    def staging(name: str, run: str, fingerprint: str = "f1") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "enhanced.nii.gz").write_text(name)
        (folder / "case.json").write_text(json.dumps({"status": "ok", "fingerprint": fingerprint, "run_id": run,
                                                      "files": ["enhanced.nii.gz"]}))
        return folder

    assert batch.publishCase(staging("first", "run1"), out / "c", "f1", "run1") == "committed"
    assert batch.publishCase(staging("again", "run1"), out / "c", "f1", "run1") == "duplicate"
    assert (out / "c" / "enhanced.nii.gz").read_text() == "first" and not (tmp_path / "again").exists()
    assert batch.finishedRecord(out / "c", "f1") is not None and batch.finishedRecord(out / "c", "f2") is None
    assert batch.publishCase(staging("newer", "run2", "f2"), out / "c", "f2", "run2") == "replaced"
    assert (out / "c" / "enhanced.nii.gz").read_text() == "newer"
    assert sorted(p.name for p in out.iterdir()) == [".work", "c"]        # the old copy waits in .work/run2
    (out / "foreign").mkdir()
    (out / "foreign" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a batch case folder"):
        batch.publishCase(staging("x", "run3"), out / "foreign", "f1", "run3")
    assert (out / "foreign" / "notes.txt").read_text() == "keep"
    lock = batch.acquireLock(out)
    with pytest.raises(InputError, match="another medanalysis batch"):
        batch.acquireLock(out)
    lock.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname()}))
    assert batch.acquireLock(out) == lock                                  # stale lock of a dead process


def test_cli_refuses_bad_options_before_touching_anything(tmp_path, data, capsys):
    from MedAnalysisLib.cli import main

    manifest = write_manifest(tmp_path / "m.csv", [{"case_id": "a", "input": str(data / "a.nii.gz")}])
    out = tmp_path / "out"
    for extra, subject in ((["--threads-per-worker", "0"], "--threads-per-worker"), (["--workers", "0"], "--workers"),
                           (["--memory-limit", "lots"], "--memory-limit"), (["--steps", "enhance,warp"], "--steps"),
                           (["--set", "modle=x"], "--set"), (["--scheduler", "nowhere"], "--scheduler")):
        assert main(["batch", str(manifest), "-o", str(out), *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"medanalysis batch: error: {subject}") and "\n" not in error, error
        assert not out.exists()


# --- LocalCluster: 2 process workers, one killed in the middle -----------------------------------

def test_local_cluster_survives_killed_worker(tmp_path, data):
    """Case a0 holds its worker until the test has killed that worker process; a0 and a1 have
    the same input, so a0 (run again elsewhere) must equal a1 voxel for voxel."""
    markers = tmp_path / "markers"
    markers.mkdir()
    rows = [{"case_id": "a0", "input": str(data / "a.nii.gz"), "hold": "1"},
            {"case_id": "b", "input": str(data / "b.nii.gz"), "hold": ""},
            {"case_id": "c", "input": str(data / "c.nii.gz"), "hold": ""},
            {"case_id": "a1", "input": str(data / "a.nii.gz"), "hold": ""}]
    manifest = write_manifest(tmp_path / "cohort.csv", rows)
    out = tmp_path / "out"
    options = batch.BatchOptions(steps=["hold", "enhance", "segment"], workers=2, threadsPerWorker=1,
                                 memoryLimit="3GB", dashboardAddress=":0",
                                 defaults={"model": str(data / "tiny.safetensors"), "preset": "none",
                                           "denoise": "gaussian", "normalize": "zscore", "markers": str(markers)})
    lines, progress = [], []
    shared_scratch = Path(tempfile.gettempdir()) / "dask-scratch-space"
    scratch_before = set(shared_scratch.glob("*")) if shared_scratch.exists() else set()
    run = BatchThread(manifest, out, options, progress=lambda f, m: progress.append(f), log=lines.append,
                      registry=registry_with_hold())
    run.start()
    marker = wait_for(lambda: next(iter(markers.glob("a0-*.pid")), None), "case a0 to start")
    assert list((out / batch.WORK_DIR).glob("*/dask/*")), "workers keep their scratch under the output folder"
    pid = int(marker.read_text())
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             "the worker process to die", 10)
    (markers / "release").touch()
    run.join(WAIT_S)
    assert not run.is_alive() and run.error is None, run.error
    result = run.result
    assert result["counts"] == {"ok": 4, "failed": 0, "skipped": 0}
    assert any(line.startswith(f"dask dashboard: {DASHBOARD}") for line in lines), lines
    assert progress[-1] == 1.0
    assert not (out / batch.WORK_DIR).exists()  # the scratch went with the run
    assert (set(shared_scratch.glob("*")) if shared_scratch.exists() else set()) == scratch_before
    summary = read_summary(out)
    assert list(summary) == ["a0", "b", "c", "a1"] and {r["status"] for r in summary.values()} == {"ok"}
    assert all(float(r["seconds"]) > 0 and r["error"] == "" for r in summary.values())
    assert float(summary["a0"]["gray_matter_ml"]) == float(summary["a1"]["gray_matter_ml"]) > 0
    # exactly one folder per case, no staging or attempt folders left, nothing duplicated
    assert sorted(p.name for p in out.iterdir()) == ["a0", "a1", "b", "c", "summary.csv"]
    records = {c: check_case(out, c, data / f"{c[0]}.nii.gz") for c in ("a0", "b", "c", "a1")}
    assert len({r["run_id"] for r in records.values()}) == 1
    assert len(list(markers.glob("a0-*.pid"))) >= 2                      # a0's hold ran again after the kill
    assert records["a0"]["workers"]["hold"] != "" and records["a0"]["fingerprint"] != records["b"]["fingerprint"]
    for name in ("enhanced.nii.gz", "segmentation.seg.nrrd"):
        assert np.array_equal(labels_of(out / "a0" / name), labels_of(out / "a1" / name))
    assert not np.array_equal(labels_of(out / "a0" / "enhanced.nii.gz"), labels_of(out / "b" / "enhanced.nii.gz"))


# --- separately started scheduler and workers ------------------------------------------------------

def _dask_command(kind: str) -> list:
    script = Path(sys.executable).parent / "dask"
    if script.exists():
        return [str(script), kind]
    return [sys.executable, "-m", f"distributed.cli.dask_{kind}"]


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory):
    """`dask scheduler` + two `dask worker` processes on 127.0.0.1; one offers GPU=1 (a resource
    label only: the tiny model runs on the CPU with device=auto; these tests run without a GPU)."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("cluster")
    # workers unpickle hold_step from this module (test_batch) and it imports helpers: both folders
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(Path(__file__).parent), str(TESTS)]))
    scheduler_file = folder / "scheduler.json"
    processes = [subprocess.Popen(_dask_command("scheduler") + ["--host", "127.0.0.1", "--port", "0",
                                  "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
                                  env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for(scheduler_file.exists, "the scheduler file", 60)
        # the GPU worker has two threads: one segmentation at a time (GPU=1) while its other thread
        # takes CPU steps (a held case must not block the GPU queue)
        for name, threads, extra in (("gpu-worker", "2", ["--resources", "GPU=1"]), ("cpu-worker", "1", [])):
            processes.append(subprocess.Popen(
                _dask_command("worker") + ["--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                                           "--nthreads", threads, "--nworkers", "1", "--name", name,
                                           "--memory-limit", "3GB", "--local-directory", str(folder), *extra],
                env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            workers = client.scheduler_info()["workers"]
            gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU")]
        yield {"address": address, "gpu_worker": gpu[0]}
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_resume_after_interrupt_and_rerun_on_parameter_change(tmp_path, data, external_cluster):
    markers = tmp_path / "markers"
    markers.mkdir()
    rows = [{"case_id": "a", "input": str(data / "a.nii.gz"), "denoise": "gaussian", "hold": ""},
            {"case_id": "b", "input": str(data / "b.nii.gz"), "denoise": "gaussian", "hold": ""},
            {"case_id": "c", "input": str(data / "c.nii.gz"), "denoise": "gaussian", "hold": "1"}]
    manifest = write_manifest(tmp_path / "cohort.csv", rows)
    out = tmp_path / "out"
    options = batch.BatchOptions(steps=["hold", "enhance", "segment"], scheduler=external_cluster["address"],
                                 defaults={"model": str(data / "tiny.safetensors"), "preset": "none",
                                           "markers": str(markers)})
    registry = registry_with_hold()
    cancel = CancelToken()
    first = BatchThread(manifest, out, options, cancel=cancel, registry=registry)
    first.start()
    # interrupt once a and b are finished while c still waits
    wait_for(lambda: (out / "a" / "case.json").exists() and (out / "b" / "case.json").exists(), "a and b")
    wait_for(lambda: next(iter(markers.glob("c-*.pid")), None), "case c to start")
    assert not (out / "c").exists()
    cancel.cancel()
    first.join(30)
    assert isinstance(first.error, OperationCancelled)
    interrupted = read_summary(out)
    assert interrupted["c"]["status"] == "failed" and "interrupted" in interrupted["c"]["error"]
    assert {interrupted[c]["status"] for c in "ab"} == {"ok"}
    assert not (out / ".batch.lock").exists()
    before = {c: json.loads((out / c / "case.json").read_text()) for c in "ab"}
    (markers / "release").touch()

    second = batch.runBatch(manifest, out, options, registry=registry)
    assert [r["status"] for r in second["cases"]] == ["skipped", "skipped", "ok"]
    summary = read_summary(out)
    assert summary["a"]["gray_matter_ml"] == interrupted["a"]["gray_matter_ml"] != ""   # metrics kept for skipped
    for c in "ab":
        assert json.loads((out / c / "case.json").read_text())["run_id"] == before[c]["run_id"]
    records = {c: check_case(out, c, data / f"{c}.nii.gz") for c in "abc"}
    # segmentation asked for the GPU resource, so it ran on the worker that offers one
    assert {r["workers"]["segment"] for r in records.values()} == {external_cluster["gpu_worker"]}
    assert second["gpu_resource"] is True

    rows[1]["denoise"] = "median"            # change b's parameter: only b runs again
    write_manifest(manifest, rows)
    third = batch.runBatch(manifest, out, options, registry=registry)
    assert [r["status"] for r in third["cases"]] == ["skipped", "ok", "skipped"]
    rerun = json.loads((out / "b" / "case.json").read_text())
    assert rerun["fingerprint_parts"]["parameters"]["denoise"] == "median"
    assert rerun["run_id"] != before["b"]["run_id"] and rerun["fingerprint"] != before["b"]["fingerprint"]
    assert json.loads((out / "a" / "case.json").read_text())["run_id"] == before["a"]["run_id"]
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", "summary.csv"]


def test_cli_bad_cases_against_external_scheduler(tmp_path, data, external_cluster):
    manifest = write_manifest(tmp_path / "cohort.csv", [
        {"case_id": "good", "input": str(data / "b.nii.gz")},
        {"case_id": "missing", "input": "nowhere/missing.nii.gz"},
        {"case_id": "corrupt", "input": str(data / "corrupt.nii.gz")}])
    out = tmp_path / "out"
    (out / "corrupt").mkdir(parents=True)            # an earlier result must survive a failed re-run
    (out / "corrupt" / "case.json").write_text(json.dumps({"status": "ok", "fingerprint": "old", "files": []}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "MedAnalysisLib.cli", "batch", str(manifest), "-o", str(out),
               "--steps", "enhance,segment", "--scheduler", external_cluster["address"], "--json",
               "--set", f"model={data / 'tiny.safetensors'}", "--set", "preset=none", "--set", "denoise=gaussian"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"] == {"ok": 1, "failed": 2, "skipped": 0}
    assert f"dask dashboard: {DASHBOARD}" in result.stderr
    summary = read_summary(out)
    assert summary["good"]["status"] == "ok"
    assert summary["missing"]["status"] == "failed"
    assert "missing.nii.gz" in summary["missing"]["error"] and "does not exist" in summary["missing"]["error"]
    assert summary["corrupt"]["status"] == "failed" and summary["corrupt"]["error"].startswith("enhance: ")
    assert "corrupt.nii.gz" in summary["corrupt"]["error"] and "not a readable image" in summary["corrupt"]["error"]
    assert json.loads((out / "corrupt" / "case.json").read_text())["fingerprint"] == "old"
    assert not (out / "missing").exists()
    good = check_case(out, "good", data / "b.nii.gz")
    volumes = {k: v for k, v in good["metrics"].items() if k in TISSUE_VOLUME_KEYS}
    assert "white_matter_ml" in volumes    # summary.csv carries the case's own metrics
    assert {k: float(summary["good"][k]) for k in volumes} == pytest.approx(volumes)
    # the same command again: the good case is reused, the bad ones fail again the same way
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 3 and json.loads(again.stdout)["counts"] == {"ok": 0, "failed": 2, "skipped": 1}
    # a bad manifest is bad input for the whole run: exit 2, one line
    (tmp_path / "bad.csv").write_text("case_id,file\nx,y\n")
    bad = subprocess.run(command[:4] + [str(tmp_path / "bad.csv")] + command[5:], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "bad.csv" in bad.stderr


def test_register_segment_monitor_steps(tmp_path, data):
    """A longitudinal case: follow-up registered to baseline, both segmented, change report."""
    moved = sitk.ReadImage(str(data / "b.nii.gz"))
    motion = sitk.Euler3DTransform((0, 0, 18), 0.04, 0.0, -0.03, (3.0, -2.0, 1.0))
    moved = sitk.Resample(moved, moved, motion, sitk.sitkLinear, 0.0)  # followup(x) = baseline(motion(x))
    sitk.WriteImage(moved, str(tmp_path / "followup.nii.gz"))
    manifest = write_manifest(tmp_path / "cohort.csv", [
        {"case_id": "p1", "input": str(data / "a.nii.gz"), "followup": str(tmp_path / "followup.nii.gz")}])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", "batch", str(manifest), "-o",
                             str(tmp_path / "out"), "--steps", "register,segment,monitor", "--workers", "1",
                             "--set", f"model={data / 'tiny.safetensors'}", "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = read_summary(tmp_path / "out")["p1"]
    assert summary["status"] == "ok" and float(summary["registration_final_metric"]) < 0
    case = tmp_path / "out" / "p1"
    assert (case / "followup_to_baseline.tfm").is_file() and (case / "report" / "report.html").is_file()
    assert (case / "segmentation.seg.nrrd").is_file() and (case / "followup_segmentation.seg.nrrd").is_file()
    transform = sitk.ReadTransform(str(case / "followup_to_baseline.tfm"))
    # baseline -> follow-up points: the inverse of the motion used to make the follow-up
    expected = np.array(motion.GetInverse().TransformPoint((0.0, 0.0, 18.0)))
    assert np.linalg.norm(np.array(transform.TransformPoint((0.0, 0.0, 18.0))) - expected) < 1.5


def test_local_workers_keep_freed_memory_for_reuse():
    """Local workers start with our malloc settings (not Dask's return-everything default) and
    single-threaded libraries."""
    options = batch.BatchOptions(workers=1, dashboardAddress=None)
    client, cluster = batch._openClient(options, lambda message: None)
    try:
        environ = client.run(lambda: {k: os.environ.get(k) for k in (*batch.MALLOC_ENVIRONMENT, "OMP_NUM_THREADS")})
        (values,) = environ.values()
        assert values == {**batch.MALLOC_ENVIRONMENT, "OMP_NUM_THREADS": "1"}
    finally:
        client.close()
        cluster.close()
