"""Network configuration (plain JSON data) of the default brain tissue / lesion model, and a safe builder.

The configuration travels with the weights (``Resources/Models/brain_tissue_lesion_unet.json``):
``build_network`` only instantiates an allow-listed class from ``monai.networks.nets`` with
plain JSON arguments, so a model file can never make the loader run arbitrary code.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict

MODEL_NAME = "brain_tissue_lesion_unet"

ALLOWED_NETWORKS = ("UNet", "BasicUNet", "DynUNet", "SegResNet", "AttentionUnet")

LABELS = [
    {"value": 0, "name": "background", "color": [0.0, 0.0, 0.0]},
    {"value": 1, "name": "cerebrospinal fluid", "color": [0.42, 0.64, 0.93]},
    {"value": 2, "name": "gray matter", "color": [0.6, 0.6, 0.6]},
    {"value": 3, "name": "white matter", "color": [0.96, 0.96, 0.86]},
    {"value": 4, "name": "lesion", "color": [0.9, 0.2, 0.2]},
]

DEFAULT_CONFIG: Dict[str, Any] = {
    "name": MODEL_NAME,
    "network": {
        "class": "UNet",
        "args": {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 5,
            "channels": [16, 32, 64, 128],
            "strides": [2, 2, 2],
            "num_res_units": 1,
            "norm": "INSTANCE",
        },
    },
    "preprocessing": {
        "spacing_mm": [1.0, 1.0, 1.0],
        "interpolation": "linear",
        "orientation": "RAS",
        "orientation_note": (
            "ITK orientation code (index axes point to Right, Anterior, Superior), as the MNI152 "
            "template; the array is SimpleITK's GetArrayFromImage order (z, y, x) and the network "
            "input tensor is (1, 1, z, y, x). Training rotates by up to +-20 degrees and flips "
            "left-right, so small deviations are tolerated."
        ),
        "intensity": {
            "method": "percentile",
            "lower_percentile": 0.5,
            "upper_percentile": 99.5,
            "scope": "whole resampled volume, all voxels (zeros included)",
            "target_range": [0.0, 1.0],
            "clip": True,
        },
        "input_channels": 1,
    },
    "inference": {
        "roi_size": [96, 96, 96],
        "sw_batch_size": 1,
        "overlap": 0.25,
        "mode": "gaussian",
        "activation": "softmax",
        "output": "argmax over the 5 classes",
    },
    "labels": LABELS,
}


def default_config() -> Dict[str, Any]:
    """A deep copy of the default configuration."""
    return copy.deepcopy(DEFAULT_CONFIG)


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"network argument {where}: non-string key {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise ValueError(f"network argument {where} is not plain JSON data: {type(value).__name__}")


def build_network(config: Dict[str, Any]):
    """Build a ``monai.networks.nets`` network from ``config`` (full model config or its "network" part).

    Raises ValueError for a class outside ``ALLOWED_NETWORKS`` or non-JSON arguments.
    """
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict):
        raise ValueError("network config must be a dict")
    net_cfg = config.get("network", config)
    if not isinstance(net_cfg, dict):
        raise ValueError("network config must be a dict")
    cls_name = net_cfg.get("class")
    if cls_name not in ALLOWED_NETWORKS:
        raise ValueError(f"network class {cls_name!r} is not allowed (allowed: {', '.join(ALLOWED_NETWORKS)})")
    args = net_cfg.get("args", {})
    if not isinstance(args, dict):
        raise ValueError("network args must be a dict")
    _check_plain(args, "args")
    from monai.networks import nets

    cls = getattr(nets, cls_name)
    return cls(**copy.deepcopy(args))


def count_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))
