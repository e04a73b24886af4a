"""The `spd` command: one subcommand per pipeline stage, each in its own module.

Every stage module exposes `add_arguments(parser)` and `run(params, args) -> int`. The whole params
file is validated before a stage starts; user errors print one clear line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.config import load_params
from spd.config import ConfigError
from spd.errors import SpdError

STAGES = {
    "synth": ("pipeline.synthesize", "generate synthetic multi-task humans (LIP or ATR layout)"),
    "prepare": ("pipeline.prepare", "pack a raw dataset into letterboxed arrays per split"),
    "loss-weights": ("pipeline.loss_weights", "write the loss weights the train stage will use (for DVC)"),
    "train": ("pipeline.train", "train SPD on Ray Train, tracked in MLflow"),
    "tune": ("tuning.tune", "Ray Tune search of the loss weights λ"),
    "evaluate": ("pipeline.evaluate", "evaluate the trained model on the val split(s)"),
    "register": ("pipeline.register", "log + register the model in MLflow, move the champion alias"),
    "ablation": ("pipeline.ablation", "task-set ablation: train/evaluate one cell, or write the report"),
    "predict": ("pipeline.predict", "predict masks for images with a model file or registry URI"),
}


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `stage`'s module is imported (so `spd synth` does not pay for Ray's import)."""
    parser = argparse.ArgumentParser(prog="spd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override one parameter (YAML value); repeatable",
        )
        if name == stage:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(stage if stage in STAGES else None).parse_args(argv)
    module = importlib.import_module(STAGES[args.stage][0])
    try:
        params = load_params(args.params, args.overrides)
        return int(module.run(params, args) or 0)
    except ConfigError as e:
        print(f"spd {args.stage}: invalid parameters: {e}", file=sys.stderr)
        return 2
    except SpdError as e:
        print(f"spd {args.stage}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spd {args.stage}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
