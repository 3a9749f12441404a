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

Package layout (by responsibility; the public names are also importable from here):

* :mod:`.manifest`: :class:`CaseSpec`, reading and validating the manifest (case ids, known and
  operator-only columns), the effective parameters of a case;
* :mod:`.fingerprint`: model hashes, case fingerprints, ``case.json`` records;
* :mod:`.steps`: :class:`BatchStep`, the step adapters, :data:`STEPS` and :data:`STEP_ORDER`;
* :mod:`.runner`: Dask client and cluster, worker plugin, step and commit tasks, atomic
  publishing, the run lock, :func:`runBatch` and ``summary.csv``.

Dask pickles the step functions, tasks and plugins by their defining module
(``MedAnalysisLib.batch.steps``, ``MedAnalysisLib.batch.runner``), which workers import.
"""

from __future__ import annotations

from .manifest import (BASE_COLUMNS, OPERATOR_ONLY_COLUMNS, CaseSpec, caseParameters, knownColumns, parseFlag,
                       readManifest)
from .fingerprint import CASE_FILE, caseFingerprint, finishedRecord, modelSha256, readCaseRecord
from .steps import (STEP_ORDER, STEPS, BatchStep, StepFunction, brainMaskStep, enhanceStep, enhancementParameters,
                    importStep, monitorStep, registerStep, resolveSteps, segmentStep, workerThreads)
from .runner import (DEFAULT_CASE_TIMEOUT_S, EVENT_TOPIC, LOCK_FILE, MALLOC_ENVIRONMENT, SUMMARY_COLUMNS,
                     THREAD_ENVIRONMENT, WORK_DIR, BatchOptions, StepFailed, ThreadLimitPlugin, _openClient,
                     acquireLock, checkOptions, commitCase, publishCase, runBatch, runCaseStep, threadEnvironment,
                     writeSummary)

__all__ = ["BatchOptions", "BatchStep", "CaseSpec", "STEPS", "STEP_ORDER", "readManifest", "resolveSteps",
           "caseFingerprint", "modelSha256", "runBatch", "writeSummary", "workerThreads", "ThreadLimitPlugin"]
