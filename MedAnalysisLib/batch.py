"""Cohort runs on Dask distributed: ``medanalysis batch MANIFEST.csv -o OUT_DIR``.

Manifest (CSV, UTF-8, header row; blank rows and rows whose ``case_id`` starts with ``#`` are
ignored; relative paths are relative to the manifest's folder):

==================  ====================================================================
column              meaning
==================  ====================================================================
``case_id``         folder name of the case's outputs: letters, digits, ``.``, ``_``, ``-``
``input``           baseline image file (or DICOM folder / ZIP with the ``import`` step)
``followup``        optional follow-up image (``register`` and ``monitor`` use it; the
                    other steps process it as well as the baseline)
``series``          import: SeriesInstanceUID of the baseline (default: the only one)
``followup_series`` import: SeriesInstanceUID of the follow-up
``anonymize``       import: de-identify (true/false)
``preset``          enhance: preset name (default ``mri-brain-t1``; ``none`` for no preset);
                    the columns below override the preset's values, as the CLI options do
``denoise``         enhance: gaussian|median|curvature|gradient|nlm
``bias_correct``    enhance: true/false; ``bias_method``: tissue|n4
``normalize``       enhance: zscore|minmax|percentile
``spacing``         enhance: resample to this spacing in mm ("1.5" or "1 1 3" / "1x1x3")
``crop``            enhance: crop to the foreground (true/false)
``model``           segment: catalog name or model path (default ``brain-tissue-lesion``)
``device``          segment: auto|cpu|cuda; ``tta``, ``trusted``: true/false
==================  ====================================================================

Empty cells take the default (or the value given with ``--set COLUMN=VALUE``).

Outputs: ``OUT_DIR/<case_id>/`` holds the files of every step (``enhanced.nii.gz``,
``segmentation.seg.nrrd``, ``followup_…``, each with its ``.provenance.json``) and
``case.json`` (fingerprint, files, metrics, timings); ``OUT_DIR/summary.csv`` has
``case_id,status,seconds,error`` and the key metrics (segment volumes in ml), status one of
``ok``, ``failed``, ``skipped``.

Safety and resumption: every step writes into its own attempt folder under
``OUT_DIR/.work/<run>/``; the finished case is assembled there and renamed into
``OUT_DIR/<case_id>/`` in one step, so a case folder is either complete or absent, and a task
that runs twice (worker lost after it finished) cannot leave two outputs: the second finisher
discards its copy. A case whose ``case.json`` fingerprint (input content SHA-256, parameters
of the selected steps, step list, MedAnalysis version, model SHA-256) is unchanged is skipped.
A failed case keeps any previous output and does not stop the others. Tasks of a lost worker
are rescheduled by Dask; unexpected exceptions are retried (``retries``), bad input
(:class:`~MedAnalysisLib.core.errors.InputError`) is not.

Engine: a :class:`distributed.LocalCluster` of process workers (one thread each by default),
or an existing cluster (``--scheduler tcp://HOST:PORT``; inputs and OUT_DIR must then be on a
file system every worker sees at the same paths). Each worker thread runs one step at a time
with single-threaded torch / ITK / OpenMP, so workers x threads <= cores fills a machine
without oversubscribing it. Steps that use a GPU (``segment``) ask for one ``GPU`` resource
only when some worker offers one (``dask worker --resources GPU=1``, one worker per GPU).

Step registry: :data:`STEPS` maps a step name to a :class:`BatchStep`; a new pipeline step
plugs in with one entry whose function has the signature
``function(case, inputs, params, outDir) -> {"outputs": {artifact: path}, "metrics": {...}}``
and runs the same logic as its CLI command on its own headless scene (``mrml.newScene()``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import __version__
from .core.errors import InputError, MedAnalysisError, OperationCancelled
from .core.progress import CancelToken, ProgressCallback, ProgressReporter, atomic_output

BASE_COLUMNS = ("case_id", "input", "followup")
STEP_ORDER = ("import", "enhance", "brain-mask", "register", "segment", "monitor")
SUMMARY_COLUMNS = ("case_id", "status", "seconds", "error")
# Permissions to run code come from the operator (command line), never from a manifest cell.
OPERATOR_ONLY_COLUMNS = ("trusted",)
CASE_FILE = "case.json"
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
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("", "0", "false", "no", "n", "off")

StepFunction = Callable[["CaseSpec", dict, dict, Path], dict]


# --- manifest -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One manifest row: absolute input paths and the row's non-empty parameter cells."""

    caseId: str
    input: str
    followup: Optional[str]
    parameters: dict
    row: int


@dataclasses.dataclass(frozen=True)
class BatchStep:
    """A pipeline step the batch can run.

    Attributes:
        function: ``function(case, inputs, params, outDir) -> {"outputs", "metrics"}``; ``inputs``
            maps artifact names ("image", "followup", "segmentation"...) to files, ``params`` is the
            case's parameters (strings), files go into ``outDir``; ``outputs`` replace or add
            artifacts for the following steps. Raise InputError for bad input.
        columns: manifest parameter columns the step reads.
        defaults: default values of some of these columns.
        usesGpu: ask for a ``GPU`` resource when some worker offers one.
        hashedColumns: column -> function(value) giving the SHA-256 of what the value names
            (a model), part of the case fingerprint.
    """

    function: StepFunction
    columns: tuple = ()
    defaults: dict = dataclasses.field(default_factory=dict)
    usesGpu: bool = False
    hashedColumns: dict = dataclasses.field(default_factory=dict)


def parseFlag(value: Any, subject: str) -> bool:
    """true/false cell of the manifest (1/0, yes/no, on/off; empty is false)."""
    text = str(value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(subject, f"expected true or false, got '{value}'")


def knownColumns(registry: dict) -> list:
    columns = list(BASE_COLUMNS)
    for step in registry.values():
        columns.extend(c for c in step.columns if c not in columns)
    return columns


def readManifest(path: "str | os.PathLike", registry: Optional[dict] = None) -> list[CaseSpec]:
    """Cases of a manifest CSV (see the module docstring); InputError names the manifest and row."""
    registry = STEPS if registry is None else registry
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest file does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            header = [(name or "").strip() for name in (reader.fieldnames or [])]
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(path, f"not a readable CSV manifest ({error})") from None
    for required in ("case_id", "input"):
        if required not in header:
            raise InputError(path, f"manifest needs the columns case_id,input[,followup]; '{required}' is missing")
    known = knownColumns(registry)
    for name in header:
        if name in OPERATOR_ONLY_COLUMNS:
            raise InputError(path, f"column '{name}' is not allowed in a manifest: permission to run model code "
                                   f"comes from the operator (medanalysis batch --set {name}=1)")
        if name not in known:
            raise InputError(path, f"unknown column '{name}' (known: {', '.join(known)})")
    base = path.resolve().parent
    cases, seen = [], {}
    for line, row in rows:
        cells = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not any(cells.values()) or cells.get("case_id", "").startswith("#"):
            continue
        caseId = cells.get("case_id", "")
        if not _CASE_ID.match(caseId):
            raise InputError(path, f"line {line}: case_id '{caseId}' must be 1-128 letters, digits, '.', '_' or '-' "
                                   "and start with a letter or digit")
        if caseId in seen:
            raise InputError(path, f"line {line}: case_id '{caseId}' repeats line {seen[caseId]}")
        seen[caseId] = line
        if not cells.get("input"):
            raise InputError(path, f"line {line}: case '{caseId}' has no input")
        parameters = {k: v for k, v in cells.items() if k not in BASE_COLUMNS and v != ""}
        cases.append(CaseSpec(caseId, _resolve(cells["input"], base),
                              _resolve(cells["followup"], base) if cells.get("followup") else None,
                              parameters, line))
    if not cases:
        raise InputError(path, "manifest lists no case")
    return cases


def _resolve(value: str, base: Path) -> str:
    candidate = Path(value).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).absolute())


def resolveSteps(names: "Sequence[str] | str | None", registry: dict) -> list[str]:
    """Validated step list (default: every available step in pipeline order)."""
    if names is None or names == "":
        return [name for name in STEP_ORDER if name in registry]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    steps = []
    for name in names:
        if name not in registry:
            where = "is not available in this installation" if name in STEP_ORDER else "is unknown"
            raise InputError("--steps", f"step '{name}' {where} (available: {', '.join(registry)})")
        if name in steps:
            raise InputError("--steps", f"step '{name}' is listed twice")
        steps.append(name)
    if not steps:
        raise InputError("--steps", "no step given")
    return steps


def caseParameters(case: CaseSpec, steps: Sequence[str], registry: dict, defaults: Optional[dict] = None,
                   manifestDir: Optional[Path] = None) -> dict:
    """Effective parameters of a case for the selected steps: step defaults < ``defaults`` < row."""
    parameters: dict = {}
    for name in steps:
        step = registry[name]
        for column in step.columns:
            fromRow = case.parameters.get(column) if column not in OPERATOR_ONLY_COLUMNS else None
            value = fromRow if fromRow is not None else (defaults or {}).get(column, step.defaults.get(column))
            if value is None or value == "":
                continue
            value = str(value)
            if column in step.hashedColumns and not Path(value).is_absolute():
                # a file named relative to the manifest (cells) or to the current folder (--set)
                for base in ([manifestDir] if manifestDir is not None else []) + [Path.cwd()]:
                    if (base / value).exists():
                        value = str((base / value).absolute())
                        break
            parameters[column] = value
    return parameters


# --- fingerprints ----------------------------------------------------------------------------

def modelSha256(spec: str) -> str:
    """SHA-256 identifying a segmentation model: the catalog's hash for a catalog name, else
    the hash of the model file or folder (and of the network config beside safetensors/.pt)."""
    from . import resources
    from .core.provenance import path_sha256
    from .core.segment.models import catalog_entry

    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep not in spec and not path.suffix:
            entry = catalog_entry(resources.modelsDir(), spec)
            return str(entry.get("sha256") or "")
        raise InputError(spec, "model file or folder does not exist")
    digest = hashlib.sha256(path_sha256(path).encode())
    if path.is_file():
        for config in (path.with_suffix(".json"), path.parent / (path.name.split(".")[0] + ".json")):
            if config.is_file() and config != path:
                digest.update(path_sha256(config).encode())
                break
    return digest.hexdigest()


def caseFingerprint(case: CaseSpec, steps: Sequence[str], parameters: dict, registry: dict) -> tuple[str, dict]:
    """(SHA-256, parts): what decides whether a finished case can be reused."""
    from .core.provenance import path_sha256

    inputs = {}
    for name, path in (("input", case.input), ("followup", case.followup)):
        if path is None:
            continue
        if not Path(path).exists():
            raise InputError(path, f"{name} file does not exist")
        inputs[name] = path_sha256(path)
    hashes = {}
    for name in steps:
        for column, function in registry[name].hashedColumns.items():
            if column in parameters:
                hashes[column] = function(parameters[column])
    parts = {"software": "MedAnalysis", "version": __version__, "steps": list(steps), "parameters": parameters,
             "inputs_sha256": inputs, "hashes_sha256": hashes}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


def readCaseRecord(folder: Path) -> Optional[dict]:
    try:
        record = json.loads((Path(folder) / CASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def finishedRecord(folder: Path, fingerprint: str) -> Optional[dict]:
    """The case record when ``folder`` holds a complete result with this fingerprint."""
    record = readCaseRecord(folder)
    if not record or record.get("status") != "ok" or record.get("fingerprint") != fingerprint:
        return None
    if not all((Path(folder) / name).exists() for name in record.get("files", [])):
        return None
    return record


# --- worker side ------------------------------------------------------------------------------

class StepFailed(RuntimeError):
    """Unexpected error in a step (Dask retries it); the message names the step."""


def workerThreads() -> int:
    """Library threads (torch, ITK) one step may use on this worker (1 unless configured)."""
    try:
        return max(1, int(os.environ.get("MEDANALYSIS_THREADS", "1")))
    except ValueError:
        return 1


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
        from .lean_monai import import_monai

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
    from .core.provenance import sidecar_path

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


# --- pipeline steps -----------------------------------------------------------------------------

def _images(inputs: dict) -> list[tuple[str, str]]:
    """(artifact, file prefix) of the baseline and, when present, the follow-up."""
    return [(artifact, prefix) for artifact, prefix in (("image", ""), ("followup", "followup_")) if artifact in inputs]


def importStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis import``: DICOM folder / ZIP / DICOMDIR or image file -> ``image.nii.gz``."""
    from .core.dicom_import import ImportParameters, import_to_files

    outputs = {}
    for artifact, prefix in _images(inputs):
        parameters = ImportParameters(series_uid=params.get(f"{prefix}series", ""),
                                      anonymize=parseFlag(params.get("anonymize"), "anonymize"))
        result = import_to_files(inputs[artifact], outDir / f"{prefix}image.nii.gz", parameters)
        if len(result["outputs"]) != 1:
            raise InputError(inputs[artifact], f"{len(result['outputs'])} volumes found: add a '{prefix}series' "
                                               "column naming the one to use")
        outputs[artifact] = result["outputs"][0]["file"]
    return {"outputs": outputs, "metrics": {}}


def enhancementParameters(params: dict):
    """EnhancementParameters from manifest cells (preset first, explicit cells override it)."""
    from .core.enhance import EnhancementParameters

    preset = params.get("preset", "")
    spacing = None
    if params.get("spacing"):
        try:
            values = [float(v) for v in re.split(r"[,x;\s]+", params["spacing"].strip()) if v]
        except ValueError:
            raise InputError("spacing", f"expected mm values like '1.5' or '1 1 3', got '{params['spacing']}'") from None
        spacing = values * 3 if len(values) == 1 else values
    fields = {"preset": None if preset.lower() in ("", "none") else preset,
              "denoise": params.get("denoise") or None, "normalize": params.get("normalize") or None,
              "bias_correct": parseFlag(params.get("bias_correct"), "bias_correct"),
              "bias_method": params.get("bias_method") or "tissue", "spacing_mm": spacing,
              "crop_to_foreground": parseFlag(params.get("crop"), "crop")}
    parameters = EnhancementParameters(**fields)
    parameters.with_preset().validate()
    return parameters


def enhanceStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis enhance``: the enhancement pipeline -> ``enhanced.nii.gz``."""
    from . import mrml
    from .core.imageio import write_image
    from .logic.enhancementlogic import EnhancementLogic

    parameters = enhancementParameters(params)
    outputs = {}
    for artifact, prefix in _images(inputs):
        scene = mrml.newScene()
        try:
            inputNode = mrml.loadVolumeNode(inputs[artifact], scene, name=artifact)
            result = EnhancementLogic(scene).enhance(inputNode, parameters)
            record = mrml.getProvenance(result.outputVolumeNode)
            path = write_image(mrml.imageFromVolumeNode(result.outputVolumeNode), outDir / f"{prefix}enhanced.nii.gz",
                               provenance=record)
        finally:
            scene.Clear(1)
        outputs[artifact] = str(path)
    return {"outputs": outputs, "metrics": {}}


def segmentStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis segment``: model segmentation -> ``segmentation.seg.nrrd`` and volumes (ml)."""
    import numpy as np

    from . import mrml
    from .core import geometry
    from .core.provenance import sidecar_path
    from .logic.segmentationlogic import DEFAULT_MODEL, SegmentationLogic, SegmentationParameters

    parameters = SegmentationParameters(model=params.get("model") or DEFAULT_MODEL,
                                        device=params.get("device") or "auto",
                                        tta=parseFlag(params.get("tta"), "tta"),
                                        trusted=parseFlag(params.get("trusted"), "trusted"), threads=workerThreads())
    if parameters.device not in ("auto", "cpu", "cuda"):
        raise InputError("device", f"expected auto, cpu or cuda, got '{parameters.device}'")
    outputs, metrics = {}, {}
    logic = None
    for artifact, prefix in _images(inputs):
        scene = mrml.newScene()
        try:
            if logic is None:
                logic = SegmentationLogic(scene)
            logic.scene = scene  # keeps the loaded model for the follow-up
            inputNode = mrml.loadVolumeNode(inputs[artifact], scene, name=artifact)
            maskFile = inputs.get(f"{prefix}brain_mask")  # from the brain-mask step, when it ran
            maskNode = mrml.loadVolumeNode(maskFile, scene, name="brain", labelmap=True) if maskFile else None
            result = logic.segment(inputNode, parameters, brainMaskNode=maskNode)
            path = outDir / f"{prefix}segmentation.seg.nrrd"
            mrml.saveSegmentation(result.segmentationNode, path)
            record = mrml.getProvenance(result.segmentationNode)
            with atomic_output(sidecar_path(path)) as tmp:
                tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
            labels = mrml.labelmapFromSegmentationNode(result.segmentationNode,
                                                       referenceImage=mrml.imageFromVolumeNode(inputNode))
            counts = np.bincount(geometry.array_view(labels).ravel().astype(np.int64))
            voxelMl = float(np.prod(labels.GetSpacing())) / 1000.0
            for spec in mrml.segmentSpecs(result.segmentationNode):
                key = re.sub(r"[^a-z0-9]+", "_", spec.name.lower()).strip("_")
                count = int(counts[spec.label]) if spec.label < counts.size else 0
                metrics[f"{prefix}{key}_ml"] = round(count * voxelMl, 3)
            metrics["segment_device"] = result.device
        finally:
            scene.Clear(1)
        outputs[f"{prefix}segmentation"] = str(path)
    return {"outputs": outputs, "metrics": metrics}


def brainMaskStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis brain-mask``: deepbet brain extraction -> ``brain_mask.nii.gz`` (used by the
    register and segment steps that follow) and the brain volume (mL)."""
    from . import mrml
    from .core.imageio import write_image
    from .logic.brainlogic import BrainExtractionLogic, BrainExtractionParameters

    parameters = BrainExtractionParameters(device=params.get("device") or "auto").validate()
    outputs, metrics = {}, {}
    logic = None
    for artifact, prefix in _images(inputs):
        scene = mrml.newScene()
        try:
            if logic is None:
                logic = BrainExtractionLogic(scene)
            logic.scene = scene  # keeps the loaded network for the follow-up
            inputNode = mrml.loadVolumeNode(inputs[artifact], scene, name=artifact)
            result = logic.extractBrain(inputNode, parameters)
            mask = BrainExtractionLogic.maskImage(result.segmentationNode, mrml.imageFromVolumeNode(inputNode))
            path = write_image(mask, outDir / f"{prefix}brain_mask.nii.gz",
                               provenance=mrml.getProvenance(result.segmentationNode))
        finally:
            scene.Clear(1)
        outputs[f"{prefix}brain_mask"] = str(path)
        metrics[f"{prefix}brain_volume_ml"] = round(result.volumeMl, 2)
    return {"outputs": outputs, "metrics": metrics}


def registerStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis register``: follow-up (moving) to baseline (fixed) -> transform + resampled follow-up."""
    from .core.imageio import read_image, write_image
    from .core.provenance import checksums_of, make_provenance
    from .core.register import RegistrationParameters, register_images, resample_moving, write_transform

    if "followup" not in inputs:
        raise InputError(case.input, "the register step needs a 'followup' column")
    parameters = RegistrationParameters(preset=params.get("registration_preset") or "rigid", threads=workerThreads())
    fixed, moving = read_image(inputs["image"]), read_image(inputs["followup"])
    masks = [read_image(inputs[key]) if key in inputs else None for key in ("brain_mask", "followup_brain_mask")]
    result = register_images(fixed, moving, parameters, fixed_mask=masks[0], moving_mask=masks[1],
                             subjects={"fixed": inputs["image"], "moving": inputs["followup"]})
    record = make_provenance("register", parameters, checksums_of([inputs["image"], inputs["followup"]]))
    transformPath = write_transform(result.transform, outDir / ("followup_to_baseline.tfm" if result.is_linear
                                                                 else "followup_to_baseline.h5"), provenance=record)
    resampled = write_image(resample_moving(moving, fixed, result.transform), outDir / "followup_registered.nii.gz",
                            provenance=record)
    summary = result.summary()
    return {"outputs": {"transform": str(transformPath), "followup_registered": str(resampled)},
            "metrics": {"registration_final_metric": summary["final_metric"],
                        "registration_seconds": summary["seconds"]}}


def monitorStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis monitor``: lesion change baseline -> follow-up, report folder ``report/``."""
    from . import mrml
    from .commands.monitor import loadSegmentationArgument
    from .core.register import read_transform
    from .logic.monitoringlogic import MonitoringLogic, MonitoringParameters

    if "followup" not in inputs:
        raise InputError(case.input, "the monitor step needs a 'followup' column")
    parameters = MonitoringParameters(model=params.get("model") or "brain-tissue-lesion",
                                      registrationPreset=params.get("registration_preset") or "rigid")
    scene = mrml.newScene()
    try:
        baseline = mrml.loadVolumeNode(inputs["image"], scene, name="baseline")
        followup = mrml.loadVolumeNode(inputs["followup"], scene, name="followup")
        segmentations = [loadSegmentationArgument(inputs[key], scene, parameters.lesionSegmentName)
                         if key in inputs else None for key in ("segmentation", "followup_segmentation")]
        transform = read_transform(inputs["transform"]) if "transform" in inputs else None
        outputs = MonitoringLogic(scene).monitor(baseline, followup, parameters, *segmentations,
                                                 reportDir=outDir / "report", registrationTransform=transform)
    finally:
        scene.Clear(1)
    summary = outputs.result["summary"]
    return {"outputs": {"report": str(outDir / "report")},
            "metrics": {"lesions_baseline": summary["lesions_baseline"], "lesions_followup": summary["lesions_followup"],
                        "burden_change_ml": summary["burden_change_ml"],
                        **{f"lesions_{status}": count for status, count in summary["counts"].items()}}}


STEPS: dict[str, BatchStep] = {
    "import": BatchStep(importStep, columns=("series", "followup_series", "anonymize")),
    "enhance": BatchStep(enhanceStep, columns=("preset", "denoise", "bias_correct", "bias_method", "normalize",
                                               "spacing", "crop"), defaults={"preset": "mri-brain-t1"}),
    "segment": BatchStep(segmentStep, columns=("model", "device", "tta", "trusted"),
                         defaults={"model": "brain-tissue-lesion"}, usesGpu=True, hashedColumns={"model": modelSha256}),
    "brain-mask": BatchStep(brainMaskStep, columns=("device",), usesGpu=True),
    "register": BatchStep(registerStep, columns=("registration_preset",), defaults={"registration_preset": "rigid"}),
    "monitor": BatchStep(monitorStep, columns=("model", "registration_preset"),
                         defaults={"model": "brain-tissue-lesion", "registration_preset": "rigid"}, usesGpu=True,
                         hashedColumns={"model": modelSha256}),
}
"""Pipeline steps by name, run in the order given by ``--steps``."""


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
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn}):
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


__all__ = ["BatchOptions", "BatchStep", "CaseSpec", "STEPS", "STEP_ORDER", "readManifest", "resolveSteps",
           "caseFingerprint", "modelSha256", "runBatch", "writeSummary", "workerThreads", "ThreadLimitPlugin"]
