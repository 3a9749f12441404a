"""``medanalysis demo``: the main job on the bundled sample, offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import mrml, resources
from .core import geometry
from .core.imageio import read_image
from .core.labels import BRAIN_TISSUE_SEGMENTS
from .core.progress import CancelToken, ProgressCallback, ProgressReporter
from .core.provenance import checksums_of, make_provenance


def runDemo(outputDir: "str | Path", scene=None, progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None) -> dict:
    """Load the MNI sample into a real MRML scene, round-trip it through the bridge and
    save it with Slicer's storage nodes; returns a JSON-able summary."""
    started = time.perf_counter()
    report = ProgressReporter(progress, cancel)
    scene = scene if scene is not None else mrml.newScene()
    outputDir = Path(outputDir)
    t1Path = resources.samplePath("mni152_t1.nii.gz")
    labelsPath = resources.samplePath("mni152_tissue_labels.nii.gz")

    report(0.05, "loading the MNI ICBM152 sample")
    t1 = read_image(t1Path)
    labels = read_image(labelsPath)
    parameters = {"sample": [t1Path.name, labelsPath.name]}
    provenance = make_provenance("demo", parameters, checksums_of([t1Path, labelsPath]))

    report(0.2, "SimpleITK -> volume node -> SimpleITK")
    volumeNode = mrml.volumeNodeFromImage(t1, scene, name="MNI152_T1", provenance=provenance)
    roundTrip = mrml.imageFromVolumeNode(volumeNode)
    voxelsIdentical = bool(np.array_equal(geometry.array_view(roundTrip), geometry.array_view(t1)))
    geometryIdentical = geometry.same_grid(roundTrip, t1, 1e-6)

    report(0.45, "labelmap -> segmentation node -> labelmap")
    segmentationNode = mrml.segmentationNodeFromLabelmap(labels, scene, name="MNI152_tissues",
                                                         segments=BRAIN_TISSUE_SEGMENTS, provenance=provenance)
    labelsBack = mrml.labelmapFromSegmentationNode(segmentationNode, referenceImage=t1)
    labelsIdentical = bool(np.array_equal(geometry.array_view(labelsBack), geometry.array_view(labels)))

    report(0.7, "saving with Slicer's storage nodes")
    outputDir.mkdir(parents=True, exist_ok=True)
    volumePath = mrml.saveVolumeNode(volumeNode, outputDir / "mni152_t1.nrrd")
    segmentationPath = mrml.saveSegmentation(segmentationNode, outputDir / "mni152_tissues.seg.nrrd")

    report(0.9, "measuring tissue volumes")
    labelArray = geometry.array_view(labels)
    voxelMl = geometry.voxel_volume_ml(labels)
    volumes = {spec.name: round(float(np.count_nonzero(labelArray == spec.label)) * voxelMl, 2)
               for spec in BRAIN_TISSUE_SEGMENTS if spec.label in (1, 2, 3)}
    report(1.0, "done")
    return {
        "operation": "demo",
        "input": {"t1": t1Path.name, "size": list(t1.GetSize()), "spacing_mm": list(t1.GetSpacing()),
                  "orientation": geometry.orientation_code(t1)},
        "round_trip": {"voxels_identical": voxelsIdentical, "geometry_identical": geometryIdentical,
                       "labels_identical": labelsIdentical},
        "segments": [s.name for s in mrml.segmentSpecs(segmentationNode)],
        "tissue_volumes_ml": volumes,
        "outputs": {"volume": str(volumePath), "segmentation": str(segmentationPath)},
        "seconds": round(time.perf_counter() - started, 2),
        "provenance": provenance,
    }
