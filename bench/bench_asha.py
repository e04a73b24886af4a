"""What ASHA saves: the same λ search with early stopping vs every trial trained to the end.

Both searches run `tuning.tune.run_search` on the same prepared data with the same seeded TPE
sampler and the same number of trials (default 8): "asha" with the tune section's ASHA settings,
"full" with a FIFO scheduler (no early stopping). Per search: total trial-epochs trained, wall
time, trials stopped early, the best λ (relative to λs) and the val mIoU it reached; then the
compute ratios and whether the best λ differs. The TPE sampler proposes from the results it has
seen, so after its random start-up trials the two searches may propose different λ.

    python bench/bench_asha.py [--trials 8] [--params params.yaml] [--set key=value ...]

Needs the search's data (the ablation's copy: `dvc repro ablation/dvc.yaml:data`). Runs in a
temporary directory (its own Tune state, outputs and sqlite MLflow store), so the project's search
and mlflow.db are untouched. Records the machine's measured peak FLOP/s before and after (a host
that slows down mid-run changes the wall ratio, not the trial-epoch ratio).
Writes bench/results/asha.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_train_step import machine, measured_peaks  # noqa: E402

from pipeline import runtime  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from spd.config import replace  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "asha.json"))
    args = ap.parse_args(argv)

    import torch

    from tuning.search import search_params
    from tuning.tune import run_search

    root = runtime.project_root(args.params)
    base = load_params(args.params, args.overrides)
    data = Path(runtime.resolve_path(root, search_params(base).prepare.main.out))
    if not (data / "train" / "manifest.json").is_file():
        print(f"{data}: no prepared data; run `dvc repro ablation/dvc.yaml:data` first", file=sys.stderr)
        return 1
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load_before = os.getloadavg()
    peak_before = measured_peaks(torch.device("cpu"), seconds=2.0, bf16=False)
    runtime.init_ray(replace(base.ray, num_cpus=base.ray.num_cpus or os.cpu_count()))

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_asha.") as tmp:
        for mode, early in (("asha", True), ("full", False)):
            work = Path(tmp) / mode
            params = replace(
                base,
                tune=replace(
                    base.tune,
                    name=f"bench-{mode}",
                    num_trials=args.trials,
                    out_dir=str(work / "out"),
                    storage_path=str(work / "ray_results"),
                    check_seeds=(),  # the seed check re-trains the winner: not what ASHA is compared on
                ),
                mlflow=replace(base.mlflow, tracking_uri=f"sqlite:///{work / 'mlflow.db'}"),
            )
            work.mkdir(parents=True)
            t0 = time.perf_counter()
            outcome = run_search(params, project_root=root, fresh=True, early_stopping=early)
            wall = time.perf_counter() - t0
            best = outcome.best
            rows[mode] = {
                "wall_s": round(wall, 1),
                "trial_epochs": sum(o.epochs for o in outcome.trials),
                "trials_stopped_early": sum(o.status == "stopped_early" for o in outcome.trials),
                "trials_failed": sum(o.status == "failed" for o in outcome.trials),
                "best": {
                    "trial_id": best.trial_id,
                    "lambda_pose": best.lambda_pose,
                    "lambda_densepose": best.lambda_densepose,
                    "lr": best.lr,
                    "val_miou": best.best_val_miou,
                },
                "trials": [
                    {
                        "lambda_pose": o.lambda_pose,
                        "lambda_densepose": o.lambda_densepose,
                        "lr": o.lr,
                        "best_val_miou": o.best_val_miou,
                        "epochs": o.epochs,
                        "status": o.status,
                    }
                    for o in outcome.trials
                ],
            }
            n_epochs = rows[mode]["trial_epochs"]
            print(f"[bench_asha] {mode}: {n_epochs} trial-epochs in {wall:.0f} s; best {rows[mode]['best']}")

    a, f = rows["asha"], rows["full"]
    ba, bf = a["best"], f["best"]
    same = all(abs(ba[k] - bf[k]) <= 1e-9 * max(1.0, abs(bf[k])) for k in ("lambda_pose", "lambda_densepose"))
    peak_after = measured_peaks(torch.device("cpu"), seconds=2.0, bf16=False)
    result = {
        "machine": machine(load_before),
        "peak_flops_before": peak_before,
        "peak_flops_after": peak_after,
        "setup": {
            "trials": args.trials,
            "epochs": base.tune.epochs,
            "epoch_images": base.tune.epoch_images,
            "grace_period": base.tune.grace_period,
            "reduction_factor": base.tune.reduction_factor,
            "workers_per_trial": base.tune.workers_per_trial,
            "cpus_per_worker": base.tune.cpus_per_worker,
            "seed": base.tune.seed,
            "image_size": base.ablation.image_size,
            "backbone": base.model.backbone,
            "overrides": args.overrides,
        },
        "asha": a,
        "full": f,
        "trial_epochs_ratio": round(a["trial_epochs"] / f["trial_epochs"], 3),
        "wall_ratio": round(a["wall_s"] / f["wall_s"], 3),
        "best_lambda_differs": not same,
        "best_val_miou_delta": round((ba["val_miou"] or 0) - (bf["val_miou"] or 0), 4),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("trial_epochs_ratio", "wall_ratio", "best_lambda_differs")}))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
