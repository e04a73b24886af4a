"""`spd loss-weights`: the loss weights (and lr) the train stage will use, written for DVC to hash.

With `loss.from_tuning: true` the train stage takes λp, λd (and lr) from `loss.tuning_file`, a file
that exists only after a search, so DVC cannot list it as a dependency of `train` unconditionally.
This stage (always run, it takes a second) writes the resolved values; `train` depends on its
output, so `dvc repro` retrains after a new search exactly when the values it trains with change,
and not at all while `loss.from_tuning` is false.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import runtime
from pipeline.config import Params, apply_tuning_results

DEFAULT_OUT = "reports/loss_weights.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output JSON (default: {DEFAULT_OUT})")


def resolved_weights(params: Params, root: Path) -> dict[str, float | bool | str]:
    """λs, λp, λd and lr as the train stage will use them, and where they came from."""
    used = apply_tuning_results(params, root)
    return {
        "from_tuning": params.loss.from_tuning,
        "source": params.loss.tuning_file if params.loss.from_tuning else "params.yaml",
        "lambda_seg": used.loss.lambda_seg,
        "lambda_pose": used.loss.lambda_pose,
        "lambda_densepose": used.loss.lambda_densepose,
        "lr": used.train.lr,
    }


def run(params: Params, args: argparse.Namespace) -> int:
    from spd.io import atomic_write_json

    root = runtime.project_root(args.params)
    out = Path(runtime.resolve_path(root, args.out))
    atomic_write_json(out, resolved_weights(params, root))
    return 0
