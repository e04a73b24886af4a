"""SPD against what a user would pick instead: stock torchvision segmentation models, from random init,
on the same prepared data, at the same training compute and at the same wall time as SPD.

    python bench/bench_peer.py                               # params.yaml's budget, every peer
    python bench/bench_peer.py --budget 60 --peers lraspp_mobilenet_v3_large
    python bench/bench_peer.py --device cuda --loader-workers 12     # minutes on one GPU
    python bench/bench_peer.py --plan-only --out plan.json   # probe once, then one job per process:
    python bench/bench_peer.py --plan plan.json --jobs SPD-seg@compute --out a.json
    python bench/bench_peer.py --merge a.json b.json ...     # and put the jobs together

Every model trains with the library's loop (bf16, channels_last) and params.yaml's optimizer, lr
schedule, batch size and augmentation (flip with left/right labels swapped, scale, rotation),
and is scored by the same `spd.engine.evaluate` (SCHP mIoU) on the same val split.

The plan comes first, in one process: every model's FLOPs per image and training throughput
(a short probe, back to back on the same machine). "Same compute" is the steps that buy `--budget`
TFLOP; "same wall" is the steps a peer makes in the time SPD needs for its compute budget (the
faster of SPD's two task sets), from the probes' throughput ratio. Every job then trains a fixed
number of steps, so jobs can run one per process, side by side on a GPU, or in several sittings,
without contention changing what "same wall" means. A peer whose wall steps are within 10% of its
compute steps reuses that run (`same_run`). Results are written after each job (an existing --out
with the same plan resumes). Writes bench/results/peer.json with the measured peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from budget import (  # noqa: E402
    Budget,
    Data,
    images_per_second,
    machine_record,
    measured_peak,
    read_result,
    spd_model,
    train_to_budget,
)

from pipeline.config import Params, load_params  # noqa: E402
from spd.flops import train_flops_per_image  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from spd.labels import IGNORE  # noqa: E402

PEERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50")
MARGIN = 0.05  # issue 12: SPD must beat every peer by this much mIoU, at same compute and same wall


class Peer(nn.Module):
    """A torchvision segmentation model answering with SPD's output key (`seg` logits)."""

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import segmentation

        # weights=None and weights_backbone=None: random init, nothing downloaded
        self.net = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.net(x)["out"]}  # (B, K, H, W)


class PeerLoss(nn.Module):
    """Cross-entropy over labelled pixels (255 ignored), the loss torchvision's references use."""

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        return F.cross_entropy(outputs["seg"].float(), batch["parsing"], ignore_index=IGNORE), {}


def contenders(params: Params, peers: list[str]) -> list[str]:
    """SPD seg only and with params' tasks (named `SPD-<tasks>`), then the peers."""
    return ["SPD-seg", "SPD-" + "+".join(params.model.tasks), *peers]


def build(name: str, params: Params, data: Data) -> tuple[nn.Module, nn.Module, Params]:
    """Model, loss and the params it trains with (SPD's tasks set from its name)."""
    torch.manual_seed(params.train.seed)
    if name.startswith("SPD-"):
        tasks = tuple(name.removeprefix("SPD-").split("+"))
        params = dataclasses.replace(params, model=dataclasses.replace(params.model, tasks=tasks))
        return *spd_model(params, data), params
    return Peer(name, data.num_classes), PeerLoss(), params


def make_plan(params: Params, names: list[str], tflop: float, device: str) -> dict:
    """Probe every model, then the jobs: each model at the compute budget, each peer at SPD's wall."""
    data = Data.of(params)
    cfg = params.train
    probe = {}
    for name in names:
        model, criterion, _ = build(name, params, data)
        batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=cfg.batch_size)))
        fpi = train_flops_per_image(model.to(memory_format=torch.channels_last), criterion, batch)
        ips = images_per_second(model, criterion, data, cfg, device)
        steps = Budget(tflop=tflop).steps_for(fpi, cfg.batch_size, len(data.train))
        probe[name] = {"gflop_per_image": fpi / 1e9, "images_per_s": ips, "compute_steps": steps}
        print(f"  {name:32} {fpi / 1e9:6.1f} GFLOP/img  {ips:7.1f} img/s  {steps} steps", flush=True)
    spd = [n for n in names if n.startswith("SPD-")]
    wall_s = min(probe[n]["compute_steps"] * cfg.batch_size / probe[n]["images_per_s"] for n in spd)
    jobs = {f"{n}@compute": probe[n]["compute_steps"] for n in names}
    for name in names:
        if name in spd:
            continue
        steps = max(1, int(wall_s * probe[name]["images_per_s"] / cfg.batch_size))
        if abs(steps / probe[name]["compute_steps"] - 1) > 0.10:
            jobs[f"{name}@wall"] = steps
    return {"budget_tflop": tflop, "wall_budget_s": wall_s, "probe": probe, "jobs": jobs}


def run_job(key: str, steps: int, params: Params, args: argparse.Namespace) -> dict:
    data = Data.of(params)
    model, criterion, params = build(key.split("@")[0], params, data)
    print(f"{key}: {steps} steps", flush=True)
    result = train_to_budget(
        model,
        criterion,
        data,
        params.train,
        Budget(steps=steps),
        tasks=params.model.tasks if key.startswith("SPD-") else ("seg",),
        evals=args.evals,
        device=args.device,
        loader_workers=args.loader_workers,
    )
    final = result.pop("final")
    return {**result, "tflop": result["curve"][-1]["tflop"], "val_miou": final["miou"]}


def table(plan: dict, results: dict) -> list[dict]:
    """One row per model and budget run so far; a peer's wall row is its compute run where the plan
    found the two within 10% (`same_run`)."""
    rows = []
    for name, probe in plan["probe"].items():
        for kind in ("compute",) if name.startswith("SPD-") else ("compute", "wall"):
            same_run = f"{name}@{kind}" not in plan["jobs"]
            r = results.get(f"{name}@compute" if same_run else f"{name}@{kind}")
            if r is None:
                continue
            rows.append(
                {
                    "model": name,
                    "budget": kind,
                    "same_run": same_run,
                    "steps": r["steps"],
                    "tflop": r["tflop"],
                    # wall at the probe's throughput: what the comparison is made at; `wall_s` is
                    # what this run took, which depends on what else ran beside it
                    "planned_wall_s": round(r["images"] / probe["images_per_s"], 1),
                    "wall_s": r["curve"][-1]["wall_s"],
                    "val_miou": r["val_miou"],
                }
            )
    return rows


def verdict(rows: list[dict]) -> list[str]:
    """Does each SPD beat every peer by MARGIN at same compute and at same wall? Said per pair."""
    spd = [r for r in rows if r["model"].startswith("SPD-")]
    lines = []
    for s in spd:
        for p in (r for r in rows if not r["model"].startswith("SPD-")):
            gap = s["val_miou"] - p["val_miou"]
            ok = "beats" if gap >= MARGIN else "does not beat"
            lines.append(f"{s['model']} {ok} {p['model']} at same {p['budget']} by {MARGIN}: Δ {gap:+.4f}")
    return lines


def write(out: Path, record: dict, results: dict) -> None:
    rows = table(record["plan"], results)
    atomic_write_json(out, {**record, "results": results, "table": rows, "verdict": verdict(rows)})


def _record(output: dict) -> dict:
    """An output without its results: the machine and the plan."""
    return {k: v for k, v in output.items() if k not in ("results", "table", "verdict")}


def start(args: argparse.Namespace, params: Params, out: Path) -> tuple[dict, dict]:
    """The record (machine, plan) and the results so far: --plan's plan or --out's (resuming it),
    else a new plan probed now."""
    previous = read_result(out) if out.exists() else None
    earlier = read_result(args.plan) if args.plan else previous
    if earlier and (args.plan or earlier["plan"]["budget_tflop"] == args.budget):
        record = _record(earlier)
        same_plan = previous is not None and previous.get("plan") == record["plan"]
        return record, previous["results"] if same_plan else {}
    peak = measured_peak(args.device)  # no earlier output, or another budget: a new plan
    plan = make_plan(params, contenders(params, args.peers), args.budget, args.device)
    return {**machine_record(args.threads, peak, args.device), "plan": plan}, {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--budget", type=float, default=240.0, help="TFLOP per model")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--evals", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="e.g. cuda: bf16 where the device computes it")
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--plan-only", action="store_true", help="probe and write the plan, train nothing")
    ap.add_argument("--plan", metavar="JSON", help="take the plan (and machine) from this earlier output")
    ap.add_argument("--jobs", help="comma-separated job keys of the plan to run (default: all)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only put these outputs' jobs together")
    ap.add_argument("--out", default=str(ROOT / "bench/results/peer.json"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    if args.merge:
        parts = [read_result(p) for p in args.merge]
        record, results = _record(parts[0]), {k: v for p in parts for k, v in p["results"].items()}
        write(out, record, results)
    else:
        record, results = start(args, params, out)
        jobs = record["plan"]["jobs"]
        keys = args.jobs.split(",") if args.jobs else list(jobs)
        unknown = [k for k in keys if k not in jobs]
        if unknown:
            sys.exit(f"bench_peer: --jobs {','.join(unknown)}: not in the plan ({', '.join(jobs)})")
        write(out, record, results)
        for key in [] if args.plan_only else keys:
            if key not in results:
                results[key] = run_job(key, jobs[key], params, args)
                write(out, record, results)
    rows = table(record["plan"], results)
    print(f"{'model':30} {'budget':8} {'TFLOP':>6} {'wall s':>7} {'val mIoU':>8}")
    for r in rows:
        print(
            f"{r['model']:30} {r['budget']:8} {r['tflop']:6.1f} {r['planned_wall_s']:7.0f} "
            f"{r['val_miou']:8.4f}"
        )
    print("\n".join(verdict(rows)))


if __name__ == "__main__":
    main()
