"""What an import takes, declared once (``core/parameters.option``); the panel, the logic, the CLI
options and the batch columns read this class. A light module (no image libraries), so that the
command-line parser can be built from it for every command.
"""

from __future__ import annotations

import dataclasses
from .errors import InputError
from .parameters import option


@dataclasses.dataclass
class ImportParameters:
    """Parameters of an import, shared by the panel, the logic, the CLI and batch runs.

    Attributes:
        series_uid: load only this SeriesInstanceUID, or one volume of it ("UID#2"), or an image
            file's name as ``scan`` lists it; "" loads every series found.
        anonymize: de-identify (DICOM PS3.15 Annex E basic profile): names from modality and
            series number, UIDs replaced, dates shifted, no descriptions or identifiers.
        regularize_geometry: resample gantry-tilted or unevenly spaced stacks onto a regular grid
            (otherwise they load with approximate geometry and a warning).
        export_dicom_dir: with ``anonymize``, also write each loaded series' de-identified DICOM
            files under this folder (one sub-folder per series).
        deid_key: with ``anonymize``, a key file (created when missing) from which pseudonyms, the
            UID map and the date shift derive, so that later runs (another time point,
            ``export-dicom --anonymize`` of a DICOM SEG) give the same ones; "" for a random key
            per run.
    """

    series_uid: str = option("", "SeriesInstanceUID (or volume id UID#n) to import; default: every series",
                             flag="--series", metavar="UID", column="series")
    anonymize: bool = option(False, "de-identify (DICOM PS3.15 Annex E basic profile, modified dates option)")
    regularize_geometry: bool = option(True, "resample gantry-tilted / unevenly spaced stacks onto a regular grid "
                                             "(--no-regularize: keep them as acquired, approximate geometry)",
                                       flag="--regularize", batch=False)
    export_dicom_dir: str = option("", "with --anonymize: also write the de-identified DICOM files under DIR",
                                   flag="--export-dicom", metavar="DIR", batch=False)
    deid_key: str = option("", "with --anonymize: key file for pseudonyms and UIDs (created when missing; keep it "
                               "private); the same key gives the same pseudonyms in later runs and in export-dicom",
                           flag="--deid-key", metavar="FILE", batch=False)

    def validate(self) -> "ImportParameters":
        if self.export_dicom_dir and not self.anonymize:
            raise InputError(self.export_dicom_dir, "DICOM export is only offered with anonymize")
        if self.deid_key and not self.anonymize:
            raise InputError(self.deid_key, "a de-identification key is only used with anonymize")
        return self

    def deidentifier(self, default=None):
        """The de-identifier these parameters ask for (from the key file), else ``default``."""
        from .dicom_deid import Deidentifier

        self.validate()
        if self.deid_key:
            return Deidentifier.from_key_file(self.deid_key, create=True)
        return default
