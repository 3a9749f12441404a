"""Enhancement presets, as data. Each maps EnhancementParameters field names to values;
explicit user settings override them. Listed by ``medanalysis enhance --list-presets``
and in the Enhancement panel."""

PRESETS = {
    "mri-brain-t1": {
        "description": "Brain MR T1: tissue-aware bias-field correction, curvature-flow denoising, "
                       "z-score inside the foreground mask.",
        "bias_correct": True, "bias_method": "tissue", "denoise": "curvature", "normalize": "zscore",
    },
    "mri-generic": {
        "description": "Any MR: N4 bias-field correction, gradient anisotropic diffusion, percentile scaling.",
        "bias_correct": True, "bias_method": "n4", "denoise": "gradient", "normalize": "percentile",
    },
    "ct-soft-tissue": {
        "description": "CT soft tissue: edge-preserving denoising that keeps HU (no normalization), "
                       "soft-tissue display window W 400 / L 40 (display only: voxel values unchanged).",
        "denoise": "curvature", "display_window": [400.0, 40.0],
    },
    "ct-lung": {
        "description": "CT lung: light Gaussian denoising, lung display window W 1500 / L -600.",
        "denoise": "gaussian", "gaussian_sigma_mm": 0.6, "display_window": [1500.0, -600.0],
    },
}
