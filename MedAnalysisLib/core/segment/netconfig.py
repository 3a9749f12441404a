"""Network configuration (plain JSON data) of the default brain tissue / lesion model, and a safe builder.

The configuration travels with the weights (``Resources/Models/brain_tissue_lesion_unet.json``):
``build_network`` only instantiates an allow-listed class from ``monai.networks.nets`` with
plain JSON arguments, so a model file can never make the loader run arbitrary code.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, Optional

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


MAX_CONFIG_BYTES = 1 << 20      # a network config is a few kB; refuse megabytes before parsing
MAX_ARGUMENT_DEPTH = 8          # nesting of the network arguments
MAX_ARGUMENT_VALUES = 10_000    # values in the network arguments


def parse_config_text(text: "str | bytes", where: str = "network config") -> Dict[str, Any]:
    """JSON text of a model config, bounded in size and nesting (ValueError otherwise)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{where} is {len(text)} bytes, more than {MAX_CONFIG_BYTES} (not a network config)")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply") from None


def _check_plain(value: Any, where: str, depth: int = 0, count: Optional[list] = None) -> None:
    count = count if count is not None else [0]
    count[0] += 1
    if count[0] > MAX_ARGUMENT_VALUES:
        raise ValueError(f"network arguments hold more than {MAX_ARGUMENT_VALUES} values")
    if depth > MAX_ARGUMENT_DEPTH:
        raise ValueError(f"network argument {where} is nested more than {MAX_ARGUMENT_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", depth + 1, count)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"network argument {where}: non-string key {k!r}")
            _check_plain(v, f"{where}.{k}", depth + 1, count)
        return
    raise ValueError(f"network argument {where} is not plain JSON data: {type(value).__name__}")


def build_network(config: Dict[str, Any], max_bytes: Optional[float] = None):
    """Build a ``monai.networks.nets`` network from ``config`` (full model config or its "network" part).

    The network is first built on PyTorch's ``meta`` device (no memory) and its parameter count
    checked against ``max_bytes`` (default: the memory budget), so a config cannot ask for more
    memory than the machine has.

    Raises ValueError for a class outside ``ALLOWED_NETWORKS``, non-JSON, too deep or too large
    arguments, or a network too large for the memory budget.
    """
    if isinstance(config, (str, bytes)):
        config = parse_config_text(config)
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
    import torch
    from monai.networks import nets

    from ..imageguard import memory_budget_bytes

    cls = getattr(nets, cls_name)
    try:
        with torch.device("meta"):
            probe = cls(**copy.deepcopy(args))
    except (RecursionError, OverflowError, MemoryError) as error:
        raise ValueError(f"network arguments cannot be built ({type(error).__name__})") from None
    parameters = count_parameters(probe)
    del probe
    limit = max_bytes if max_bytes is not None else memory_budget_bytes() / 4  # weights, gradients-free inference
    if parameters * 4 > limit:
        raise ValueError(f"network of {parameters:,} parameters ({parameters * 4 / 2**30:.2f} GiB) exceeds the "
                         f"memory budget ({limit / 2**30:.2f} GiB for weights)")
    return cls(**copy.deepcopy(args))


def count_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))
