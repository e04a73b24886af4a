"""What Ray Train costs on this machine: the same training loop in a plain process vs 1 and 2 Ray workers.

All three run `pipeline.train_loop.train_loop_per_worker` on the prepared default data with the default
model: "plain" is Ray Train V2's local mode (ScalingConfig(num_workers=0): the loop runs in this
process, no actors, no DDP), "ray_1x2" is one Ray worker with 2 CPUs / 2 threads, "ray_2x1" two
workers (gloo DDP) with 1 CPU / 1 thread each. Per configuration: the last epoch's training time
(steady state; from the reported images/s), the total fit() wall time (Ray's fixed cost shows up as
fit time minus the epochs), and the ratios the README quotes.

    python bench/bench_ray_overhead.py [--epochs 2] [--params params.yaml] [--set key=value ...]

Needs the prepared data (`dvc repro prepare`). Writes bench/results/ray_overhead.json.
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

from pipeline import runtime  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.train import build_trainer  # noqa: E402
from spd.config import replace  # noqa: E402

CONFIGS = {  # name: (Ray Train workers, CPUs = torch threads per worker)
    "plain": (0, 2),
    "ray_1x2": (1, 2),
    "ray_2x1": (2, 1),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS)
    )
    args = ap.parse_args(argv)

    base = load_params(args.params, args.overrides)
    root = runtime.project_root(args.params)
    data = Path(runtime.resolve_path(root, base.prepare.main.out))
    manifest = data / "train" / "manifest.json"
    if not manifest.is_file():
        print(f"{data}: no prepared data; run `dvc repro prepare` first", file=sys.stderr)
        return 1
    n_train = len(json.loads(manifest.read_text())["ids"])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime.init_ray(replace(base.ray, num_cpus=base.ray.num_cpus or 2))

    rows = {}
    with tempfile.TemporaryDirectory(prefix="spd-bench-ray-") as storage:
        for name in args.configs.split(","):
            workers, cpus = CONFIGS[name]
            train = replace(
                base.train, epochs=args.epochs, ray_workers=max(1, workers), cpus_per_worker=float(cpus)
            )
            train = replace(train, val_every=args.epochs, fault_at_epoch=None)  # validate once, at the end
            params = replace(base, train=train)
            trainer = build_trainer(
                params, f"bench-{name}", storage, project_root=root, verbose=False, local_mode=workers == 0
            )
            t0 = time.perf_counter()
            result = trainer.fit()
            fit_s = time.perf_counter() - t0
            m = result.metrics
            per_batch = max(1, train.batch_size // max(1, workers))
            steps = (n_train // max(1, workers)) // per_batch
            images = steps * per_batch * max(1, workers)
            epoch_s = images / m["images_per_s"]
            rows[name] = {
                "workers": workers,
                "threads_per_worker": cpus,
                "fit_s": round(fit_s, 2),
                "last_epoch_train_s": round(epoch_s, 2),
                "images_per_s": round(m["images_per_s"], 2),
                "fixed_cost_s": round(fit_s - args.epochs * epoch_s, 2),  # start-up, val, checkpoints
                "val_miou": m.get("val_miou"),
            }
            print(name, rows[name], flush=True)

    out = {
        "epochs": args.epochs,
        "train_images": n_train,
        "image_size": base.prepare.image_size,
        "backbone": base.model.backbone,
        "batch_size": base.train.batch_size,
        "cpus": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "configs": rows,
    }
    if "plain" in rows and "ray_1x2" in rows:
        out["epoch_ratio_ray1_vs_plain"] = round(
            rows["ray_1x2"]["last_epoch_train_s"] / rows["plain"]["last_epoch_train_s"], 3
        )
        out["fit_ratio_ray1_vs_plain"] = round(rows["ray_1x2"]["fit_s"] / rows["plain"]["fit_s"], 3)
    if "ray_1x2" in rows and "ray_2x1" in rows:
        out["epoch_ratio_2workers_vs_1"] = round(
            rows["ray_2x1"]["last_epoch_train_s"] / rows["ray_1x2"]["last_epoch_train_s"], 3
        )
    path = ROOT / "bench" / "results" / "ray_overhead.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
