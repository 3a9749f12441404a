"""What a DICOM export (SEG, and the monitoring SR) takes, declared once (``core/parameters.option``).
A light module (no image libraries): the command-line parser is built from it for every command."""

from __future__ import annotations

import dataclasses

from .errors import InputError
from .parameters import option

TIME_POINTS = ("baseline", "followup")


@dataclasses.dataclass
class DicomExportParameters:
    """Export of a segmentation as DICOM SEG onto its source series (and of a monitoring report as
    a TID 1500 SR referencing it); shared by the panel, the logic and the CLI."""

    seriesUid: str = option("", "SeriesInstanceUID of the reference series, when the reference holds several",
                            flag="--series", metavar="UID", batch=False)
    reportDir: str = option("", "also write the lesions of this 'medanalysis monitor' report as a TID 1500 "
                                "structured report referencing the SEG", flag="--report", metavar="MONITOR_DIR",
                            batch=False)
    timePoint: str = option("baseline", "which time point of the report the reference series is (the SR's "
                                        "volumes; centroids, in baseline space, are written at baseline)",
                            choices=TIME_POINTS, flag="--time-point", batch=False)
    anonymize: bool = option(False, "de-identify the SEG and SR with the pseudonyms and UIDs of "
                                    "'import --anonymize --deid-key' of the same series", batch=False)
    deidKey: str = option("", "the key file given to import --anonymize (required with --anonymize)",
                          flag="--deid-key", metavar="FILE", batch=False)

    def validate(self) -> "DicomExportParameters":
        if self.timePoint not in TIME_POINTS:
            raise InputError("timePoint", f"unknown choice '{self.timePoint}' (use {' or '.join(TIME_POINTS)})")
        if self.anonymize and not self.deidKey:
            raise InputError("deidKey", "de-identified export needs the key file of the de-identified import "
                                        "(--deid-key), or the SEG would not attach to that series")
        if self.deidKey and not self.anonymize:
            raise InputError("deidKey", "a de-identification key is only used with anonymize")
        return self
