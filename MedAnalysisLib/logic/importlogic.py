"""ImportLogic: DICOM series (folder, ZIP archive, DICOMDIR) and NIfTI / NRRD / MHA files into
volume nodes, with geometry QA and optional de-identification.

The work is done headless in :mod:`MedAnalysisLib.core.dicom_import`; this class turns the
loaded images into scalar (grey) or vector (colour) volume nodes through the MRML bridge,
adds the metadata and QA attributes, and sets up the display (inverted for MONOCHROME1,
the window/level the series declares). Nodes are created only after every selected volume
has loaded, so a cancelled or failed load leaves the scene unchanged.

Node attributes: ``DICOM.<keyword>`` (modality, UIDs, series number, dates, manufacturer,
field strength, kernel...; never the patient's name or ID; descriptions only when not
anonymized), ``DICOM.instanceUIDs``, ``MedAnalysis.ImportQA`` (JSON: spacing, tilt, missing
slices, regularization...), ``MedAnalysis.ImportWarnings`` (JSON list),
``MedAnalysis.VolumeId``, ``MedAnalysis.Anonymized``, ``MedAnalysis.PatientKey`` (anonymized
only), ``MedAnalysis.Provenance``.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from .. import mrml
from ..core.dicom_deid import Deidentifier
from ..core.dicom_import import (ImportParameters, ImportSession, input_checksums, provenance_parameters,
                                 scan_source)
from ..core.progress import CancelToken, ProgressCallback
from .base import LogicBase

__all__ = ["ImportLogic", "ImportParameters"]

INVERTED_GREY_COLOR_NODE = "vtkMRMLColorTableNodeInvertedGrey"


class ImportLogic(LogicBase):
    """Scan sources and load their series into volume nodes.

    One instance is one de-identification run: the pseudonymous patient key, the UID map and
    the date shift stay the same for every series it loads (baseline and follow-up match).
    """

    def __init__(self, scene=None):
        LogicBase.__init__(self, scene)
        self.deidentifier = Deidentifier()
        self.lastWarnings: list = []

    def scan(self, source: "str | os.PathLike", progress: Optional[ProgressCallback] = None,
             cancel: Optional[CancelToken] = None) -> dict:
        """Studies, series and loadable volumes of ``source`` (header-only; see ``medanalysis scan``)."""
        return scan_source(source, progress, cancel)

    def load(self, source: "str | os.PathLike", parameters: Optional[ImportParameters] = None,
             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> list:
        """Load the selected series of ``source`` (all when ``parameters.series_uid`` is empty).

        Returns:
            The new volume nodes (scalar, or vector for colour data), in scan order.
        """
        parameters = parameters or ImportParameters()
        self.deidentifier = parameters.deidentifier(self.deidentifier)
        report = self.reporter(progress, cancel)
        imported = []
        with ImportSession(source, parameters, self.deidentifier, report.sub(0.0, 0.2), report.cancel) as session:
            items = session.selected()
            for number, item in enumerate(items):
                step = report.sub(0.2 + 0.75 * number / len(items), 0.2 + 0.75 * (number + 1) / len(items))
                for image in session.load(item, step.sub(0.0, 0.9)):
                    imported.append((item, image))
                if parameters.anonymize and parameters.export_dicom_dir and item.kind == "dicom":
                    session.export_deidentified(item, parameters.export_dicom_dir, step.sub(0.9, 1.0))
        report(0.97, f"creating {len(imported)} volume node(s)")
        recordParameters = provenance_parameters(parameters, self.deidentifier)
        nodes = []
        self.lastWarnings = []
        for item, image in imported:
            provenance = self.provenance("import", recordParameters,
                                         inputChecksums=input_checksums(item, parameters.anonymize))
            node = mrml.volumeNodeFromImage(image.image, self.scene, name=image.name, provenance=provenance)
            for key, value in image.attributes.items():
                node.SetAttribute(key, value)
            self._setUpDisplay(node, image.invert_display, image.window)
            self.lastWarnings.extend(f"{image.name}: {warning}" for warning in image.warnings)
            nodes.append(node)
        report(1.0, f"loaded {len(nodes)} volume(s)")
        return nodes

    def _setUpDisplay(self, node, invert: bool, window: Optional[tuple]) -> None:
        display = node.GetDisplayNode()
        if display is None:
            return
        if invert and self.scene.GetNodeByID(INVERTED_GREY_COLOR_NODE) is not None \
                and hasattr(display, "SetAndObserveColorNodeID") and not node.IsA("vtkMRMLVectorVolumeNode"):
            display.SetAndObserveColorNodeID(INVERTED_GREY_COLOR_NODE)
        if window is not None and hasattr(display, "SetWindowLevel") and not node.IsA("vtkMRMLVectorVolumeNode"):
            center, width = window
            display.AutoWindowLevelOff()
            display.SetWindowLevel(width, center)

    @staticmethod
    def warnings(node) -> list:
        """QA warnings stored on a volume node by :meth:`load`."""
        text = node.GetAttribute("MedAnalysis.ImportWarnings") if node is not None else None
        return json.loads(text) if text else []

    @staticmethod
    def qa(node) -> dict:
        """Geometry QA measures stored on a volume node by :meth:`load`."""
        text = node.GetAttribute("MedAnalysis.ImportQA") if node is not None else None
        return json.loads(text) if text else {}


