"""The SPD network: dilated ResNet backbone + segmentation / pose / DensePose heads."""

from spd.model.spd import SPDNet, build_model, load_model_file, save_model_file

__all__ = ["SPDNet", "build_model", "load_model_file", "save_model_file"]
