#!/usr/bin/env python3
"""Regenerate the bundled longitudinal sample pair from the MNI sample (deterministic).

    python Training/make_study_pair.py

Writes, next to this script:
  study_baseline_t1.nii.gz, study_followup_t1.nii.gz   T1 at two time points (uint8): white-matter
      lesions that grew, shrank, stayed, vanished and appeared; the follow-up has a rigid head
      motion, a different bias field and different noise
  study_baseline_lesions.nii.gz, study_followup_lesions.nii.gz   ground-truth lesion ids, each in
      its own time point's space
  study_ground_truth.json   per lesion: status, baseline-space RAS centroid, volume at each time
      point (mL, own space); and the true baseline->follow-up rigid transform (ITK, LPS)
Built by MedAnalysisLib.core.phantom.make_study_pair (seed 2026, 10 lesions).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import SimpleITK as sitk

REPO = pathlib.Path(__file__).resolve().parents[1]
HERE = REPO / "Resources" / "SampleData"
sys.path.insert(0, str(REPO))

from Training import phantom  # noqa: E402

SEED = 2026
LESIONS = 10


def main() -> None:
    t1 = sitk.ReadImage(str(HERE / "mni152_t1.nii.gz"), sitk.sitkFloat32)
    tissue = sitk.ReadImage(str(HERE / "mni152_tissue_labels.nii.gz"))
    pair = phantom.make_study_pair(t1, tissue, seed=SEED, n_lesions=LESIONS)

    def as_uint8(image):
        array = np.clip(np.round(sitk.GetArrayFromImage(image)), 0, 255).astype(np.uint8)
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    sitk.WriteImage(as_uint8(pair.baseline), str(HERE / "study_baseline_t1.nii.gz"), useCompression=True)
    sitk.WriteImage(as_uint8(pair.followup), str(HERE / "study_followup_t1.nii.gz"), useCompression=True)
    sitk.WriteImage(sitk.Cast(pair.baseline_lesions, sitk.sitkUInt8), str(HERE / "study_baseline_lesions.nii.gz"),
                    useCompression=True)
    sitk.WriteImage(sitk.Cast(pair.followup_lesions, sitk.sitkUInt8), str(HERE / "study_followup_lesions.nii.gz"),
                    useCompression=True)
    transform = pair.transform
    truth = {"seed": SEED, "lesions": pair.truth,
             "transform_baseline_to_followup_lps": {"type": "Euler3D", "center": list(transform.GetCenter()),
                                                    "parameters": list(transform.GetParameters())},
             "note": "synthetic lesions in the MNI ICBM152 2009 template; research use only"}
    (HERE / "study_ground_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote the study pair to {HERE}")


if __name__ == "__main__":
    main()
