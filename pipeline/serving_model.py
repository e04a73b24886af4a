"""The MLflow "model from code" of `spd register`: MLflow runs this file to build the served model.

`pipeline.serving` (with the `spd` package) ships beside it as code_paths; its artifacts (the model
file, the serving config) reach `SpdSegmenter.load_context`.
"""

from mlflow.models import set_model

from pipeline.serving import SpdSegmenter

set_model(SpdSegmenter())
