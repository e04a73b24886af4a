"""SPD: multi-task human parsing (segmentation + pose + DensePose), a pure PyTorch library.

No ray, mlflow or dvc imports live here; the pipeline/ and tuning/ packages are the glue.
"""

__version__ = "0.1.0"
