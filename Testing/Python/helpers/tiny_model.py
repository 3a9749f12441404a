"""The tiny random segmentation network of the segmentation tests (fast, no training)."""

from __future__ import annotations


def tiny_config() -> dict:
    from MedAnalysisLib.core.segment import netconfig

    config = netconfig.default_config()
    # batch norm in eval mode: no per-window statistics, so window placement barely matters
    config["network"]["args"].update(channels=[4, 8], strides=[2], num_res_units=0, norm="BATCH")
    config["inference"]["roi_size"] = [32, 32, 32]
    return config
