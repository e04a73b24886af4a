"""Does the facing head put left and right on the right side? The default recipe with and without
`model.facing_head`, same data, same budget, paired seeds.

    python bench/bench_sides.py                              # params.yaml's budget, seeds 0 1
    python bench/bench_sides.py --device cuda --loader-workers 12 --seeds 0,1,2
    python bench/bench_sides.py --merge a.json b.json    # runs made apart (one process per arm/seed)
    python bench/bench_sides.py --budget 1 --evals 1 --seeds 0   # a quick check of the script

Both arms train params.yaml's tasks on `prepare.main.out` (run `dvc repro prepare` first) with the
library's loop (bench/budget.py) and are scored on its val split: mIoU, side accuracy (of the sided
classes' pixels given the right body part, the share on the correct side; 0.5 is chance), the sided
classes' IoU and the pairs-merged mIoU. The difference per seed gives a paired 95% CI (t). Writes
bench/results/sides.json (--out) with the device and its measured peak; --merge summarises the
results of several runs (e.g. one process per seed on one GPU) together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from budget import Budget, machine_record, measured_peak, read_result, train_spd  # noqa: E402

from pipeline.ablation_stats import Thresholds, difference  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from spd.labels import LABEL_SETS, class_flip_map  # noqa: E402
from spd.metrics import ConfusionMatrix  # noqa: E402

ARMS = {"without": ["model.facing_head=false"], "with": ["model.facing_head=true"]}
METRICS = ("miou", "side_accuracy", "side_merged_miou", "sided_min_iou", "sided_miou")


def side_scores(final: dict, label_set: str) -> dict:
    """mIoU, side accuracy, pairs-merged mIoU and the sided classes' IoUs of `evaluate`'s metrics."""
    confusion = ConfusionMatrix(len(final["per_class_iou"]))
    confusion.mat = torch.as_tensor(final["confusion"], dtype=torch.int64)
    flip = class_flip_map(label_set)
    sided = [k for k in range(len(flip)) if flip[k] != k]
    names = LABEL_SETS[label_set]
    sided_iou = {names[k]: final["per_class_iou"][k] for k in sided}
    return {
        "miou": final["miou"],
        **confusion.sides(flip),
        "sided_iou": sided_iou,
        "sided_min_iou": min(sided_iou.values()),
        "sided_miou": float(np.mean(list(sided_iou.values()))),
    }


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict:
    params = load_params(args.params, [*ARMS[arm], f"train.seed={seed}"])
    budget = Budget(tflop=args.budget) if args.budget else Budget(epochs=params.train.epochs)
    print(f"{arm} facing head, seed {seed}: {budget}", flush=True)
    result = train_spd(
        params, budget, evals=args.evals, device=args.device, loader_workers=args.loader_workers
    )
    final = result.pop("final")
    scores = side_scores(final, result["label_set"])
    print(
        f"    val mIoU {scores['miou']:.4f}, side accuracy {scores['side_accuracy']:.3f}, "
        f"sided IoU {scores['sided_min_iou']:.3f}-{max(scores['sided_iou'].values()):.3f}",
        flush=True,
    )
    return {"arm": arm, "seed": seed, "budget_tflop": result["curve"][-1]["tflop"], **result, **scores}


def summarize(runs: list[dict], th: Thresholds) -> dict:
    """Per metric: each arm's mean and the paired difference (with - without) with its CI at
    params.yaml's ablation confidence (0.95)."""
    out = {}
    for metric in METRICS:
        arms = {a: {r["seed"]: r[metric] for r in runs if r["arm"] == a} for a in ARMS}
        diff = difference(arms["with"], arms["without"], th)
        out[metric] = {
            **{f"mean_{a}": float(np.mean(list(v.values()))) for a, v in arms.items()},
            "delta": diff.delta,
            "ci95": list(diff.ci) if diff.ci else None,
            "seeds": diff.n,
        }
    return out


def write(path: Path, record: dict, runs: list[dict], th: Thresholds) -> dict | None:
    """The runs so far (written after each, so an interrupted bench keeps them) and, once both arms
    have run, the summary."""
    done = {r["arm"] for r in runs}
    summary = summarize(runs, th) if done == set(ARMS) else None
    atomic_write_json(path, {**record, "runs": runs, "summary": summary})
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument(
        "--budget", type=float, default=None, help="TFLOP per run (default: params.yaml's train.epochs)"
    )
    ap.add_argument("--seeds", default="0,1", help="comma-separated; both arms run each")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    ap.add_argument("--evals", type=int, default=3, help="evaluations along the budget")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only summarise these results together")
    ap.add_argument("--out", default=str(ROOT / "bench/results/sides.json"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    th = Thresholds.of(load_params(args.params).ablation)  # the project's confidence level
    if args.merge:
        parts = [read_result(p) for p in args.merge]
        record = {k: v for k, v in parts[0].items() if k not in ("runs", "summary")}
        summary = write(out, {**record, "merged": args.merge}, [r for p in parts for r in p["runs"]], th)
    else:
        torch.set_num_threads(args.threads)
        peak = measured_peak(args.device)
        record = {**machine_record(args.threads, peak, args.device), "command": " ".join(sys.argv)}
        runs: list[dict] = []
        for seed in args.seeds.split(","):
            for arm in args.arms.split(","):
                runs.append(run_arm(arm, int(seed), args))
                summary = write(out, record, runs, th)
    for metric, s in (summary or {}).items():
        ci = f"[{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]" if s["ci95"] else "(one seed: no CI)"
        print(
            f"{metric:>17}: without {s['mean_without']:.3f}, with {s['mean_with']:.3f}, "
            f"Δ {s['delta']:+.3f} {ci}"
        )


if __name__ == "__main__":
    main()
