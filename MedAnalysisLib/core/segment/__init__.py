"""Brain tissue / lesion segmentation: synthetic training data, network configuration, training script."""
