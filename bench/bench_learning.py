"""Val mIoU against training compute for the previous and the current default recipe, one run.

    python bench/bench_learning.py                    # both recipes at params.yaml's budget
    python bench/bench_learning.py --budget 60 --evals 3
    python bench/bench_learning.py --device cuda --loader-workers 12   # minutes on one GPU
    python bench/bench_learning.py --recipes previous --out a.json   # one recipe per process, then
    python bench/bench_learning.py --merge a.json b.json             # put them together

Both recipes train all of params.yaml's tasks on the same prepared data (`prepare.main.out`, run
`dvc repro prepare` first) with the library's loop (bf16, channels_last, in-process, no Ray), and
are evaluated on the same val split at `--evals` points of the same TFLOP budget. The previous
recipe is params.yaml with PREVIOUS_RECIPE's overrides. Writes bench/results/learning.json and
bench/results/learning.png (after each recipe), with the machine's measured peak.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from budget import Budget, machine_record, measured_peak, read_result, train_spd  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402

# The default recipe until stop 10: OS 8, 128-channel heads, AdamW 1e-3 with poly decay from the
# first step, CE only, no facing head. It ended at val mIoU 0.29 after 20 epochs (~240 TFLOP).
PREVIOUS_RECIPE = [
    "model.output_stride=8",
    "model.head_channels=128",
    "model.facing_head=false",
    "train.batch_size=8",
    "train.lr=0.001",
    "train.lr_schedule=poly",
    "train.warmup_epochs=0",
    "loss.seg_lovasz=0",
]
RECIPES = {"previous": PREVIOUS_RECIPE, "current": []}


def run_recipe(name: str, args: argparse.Namespace) -> dict:
    overrides = RECIPES[name]
    params = load_params(args.params, overrides)
    print(f"{name}: {' '.join(overrides) or 'params.yaml'}", flush=True)
    result = train_spd(
        params,
        Budget(tflop=args.budget),
        evals=args.evals,
        device=args.device,
        loader_workers=args.loader_workers,
    )
    final = result.pop("final")
    return {"recipe": name, "overrides": overrides, **result, "val_miou": final["miou"]}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(
            [p["tflop"] for p in r["curve"]], [p["val_miou"] for p in r["curve"]], "o-", label=r["recipe"]
        )
    ax.set_xlabel("training compute (TFLOP)")
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write(out: Path, record: dict, results: list[dict]) -> None:
    """The recipes run so far (written after each, so an interrupted bench keeps them) and the plot."""
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, out.with_suffix(".png"))
    atomic_write_json(out, {**record, "results": results})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--budget", type=float, default=240.0, help="TFLOP per recipe")
    ap.add_argument(
        "--recipes", default=",".join(RECIPES), help="comma-separated subset of: " + ", ".join(RECIPES)
    )
    ap.add_argument("--evals", type=int, default=4, help="evaluations along the budget")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="e.g. cuda: bf16 where the device computes it")
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument(
        "--merge", nargs="+", metavar="JSON", help="only put these results (runs made apart) together"
    )
    ap.add_argument(
        "--machine-from", metavar="JSON", help="the machine and peak of this earlier output (measured alone)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench/results/learning.json"))
    args = ap.parse_args()
    out = Path(args.out)
    if args.merge:
        parts = [read_result(p) for p in args.merge]
        record = {k: v for k, v in parts[0].items() if k != "results"}
        results = [r for p in parts for r in p["results"]]
        write(out, {**record, "merged": args.merge}, results)
    else:
        torch.set_num_threads(args.threads)
        if args.machine_from:
            machine = {k: read_result(args.machine_from)[k] for k in ("machine", "precision", "peak_gflops")}
        else:
            machine = machine_record(args.threads, measured_peak(args.device), args.device)
        record = {**machine, "budget_tflop": args.budget}
        results = []
        for name in args.recipes.split(","):
            results.append(run_recipe(name, args))
            write(out, record, results)
    for r in results:
        print(
            f"{r['recipe']:>8}: val mIoU {r['val_miou']:.4f} at {r['curve'][-1]['tflop']:.0f} TFLOP, "
            f"{r['curve'][-1]['wall_s']:.0f} s training, {r['epochs']:.1f} epochs"
        )


if __name__ == "__main__":
    main()
