#!/usr/bin/env python3
"""Regenerate the MNI ICBM152 2009 sample from the copy the ``nilearn`` wheel ships.

    python Training/make_sample_data.py

Writes, next to this script:
  mni152_t1.nii.gz          T1 template (brain-masked, 1 mm, uint8), as nilearn ships it
  mni152_gm.nii.gz          grey-matter probability (0..255), as nilearn ships it
  mni152_wm.nii.gz          white-matter probability (0..255), as nilearn ships it
  mni152_csf.nii.gz         CSF probability, DERIVED here: nilearn ships no CSF map, so
                            CSF = clip(255 * (T1 > 0) - GM - WM, 0, 255), i.e. the template's
                            non-zero brain region minus grey and white matter
  mni152_tissue_labels.nii.gz  hard labels inside the brain region: argmax of (CSF, GM, WM)
                            -> 1 CSF, 2 grey matter, 3 white matter; 0 outside
The files are deterministic (no randomness); see NOTICE.txt for the template's licence.
"""

from __future__ import annotations

import pathlib

import numpy as np
import SimpleITK as sitk


def nilearn_data_folder() -> pathlib.Path:
    import nilearn.datasets

    return pathlib.Path(nilearn.datasets.__file__).parent / "data"


def main(out_dir: pathlib.Path = pathlib.Path(__file__).resolve().parents[1] / "Resources" / "SampleData") -> None:
    source = nilearn_data_folder()
    read = lambda name: sitk.ReadImage(str(source / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"))
    t1, gm, wm = read("t1"), read("gm"), read("wm")
    t1_a = sitk.GetArrayFromImage(t1)
    gm_a = sitk.GetArrayFromImage(gm).astype(np.int32)
    wm_a = sitk.GetArrayFromImage(wm).astype(np.int32)
    brain = t1_a > 0
    csf_a = np.clip(255 * brain.astype(np.int32) - gm_a - wm_a, 0, 255).astype(np.uint8)
    labels = (np.argmax(np.stack([csf_a, gm_a, wm_a]), axis=0) + 1).astype(np.uint8)
    labels[~brain] = 0

    def write(array_or_image, name, like=t1):
        image = array_or_image
        if isinstance(array_or_image, np.ndarray):
            image = sitk.GetImageFromArray(array_or_image)
            image.CopyInformation(like)
        sitk.WriteImage(image, str(out_dir / name), useCompression=True)

    write(t1, "mni152_t1.nii.gz")
    write(gm, "mni152_gm.nii.gz")
    write(wm, "mni152_wm.nii.gz")
    write(csf_a, "mni152_csf.nii.gz")
    write(labels, "mni152_tissue_labels.nii.gz")
    print(f"wrote sample data to {out_dir}")


if __name__ == "__main__":
    main()
