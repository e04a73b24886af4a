"""SPD against what a user would pick instead: stock torchvision segmentation models, from random init,
on the same prepared data, at the same training compute and at the same wall time as SPD.

    python bench/bench_peer.py                               # params.yaml's budget, every peer
    python bench/bench_peer.py --budget 60 --peers lraspp_mobilenet_v3_large
    python bench/bench_peer.py --device cuda --loader-workers 12     # minutes on one GPU

Every model trains with the library's loop (bf16, channels_last) and params.yaml's optimizer, lr
schedule, batch size and augmentation (flip with left/right labels swapped, scale, rotation),
and is scored by the same `spd.engine.evaluate` (SCHP mIoU) on the same val split. SPD runs first,
seg only and with all three tasks; its measured training time is the wall budget of the peers.
A peer whose wall-budget run would be within 10% of its compute-budget run in steps reuses that
run (said in the JSON as `same_run`). Writes bench/results/peer.json with the measured bf16 peak.
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

from budget import Budget, machine_record, measured_peak, train_to_budget  # noqa: E402

from pipeline.config import Params, load_params  # noqa: E402
from spd.data.dataset import SPDDataset  # noqa: E402
from spd.data.packed import PackedSplit  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from spd.labels import IGNORE  # noqa: E402
from spd.losses import SPDLoss  # noqa: E402
from spd.model import build_model  # noqa: E402

PEERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50")


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


def _data(params: Params) -> tuple[SPDDataset, SPDDataset, int]:
    data = ROOT / params.prepare.main.out
    train_split, val_split = PackedSplit(data / "train"), PackedSplit(data / "val")
    return (
        SPDDataset(train_split, augment=params.train.augment),
        SPDDataset(val_split),
        train_split.num_classes,
    )


def run_spd(params: Params, tasks: tuple[str, ...], budget: Budget, args: argparse.Namespace) -> dict:
    train_ds, val_ds, k = _data(params)
    torch.manual_seed(params.train.seed)
    model_cfg = dataclasses.replace(params.model, tasks=tasks)
    print(f"SPD {'+'.join(tasks)}", flush=True)
    result = train_to_budget(
        build_model(model_cfg, k),
        SPDLoss.from_config(tasks, params.loss),
        train_ds,
        val_ds,
        params.train,
        budget,
        num_classes=k,
        tasks=tasks,
        evals=args.evals,
        device=args.device,
        loader_workers=args.loader_workers,
    )
    return _summary(f"SPD {'+'.join(tasks)}", result)


def run_peer(params: Params, name: str, budget: Budget, args: argparse.Namespace) -> dict:
    train_ds, val_ds, k = _data(params)
    torch.manual_seed(params.train.seed)
    what = f"{budget.tflop:.0f} TFLOP" if budget.tflop else f"{budget.wall_s:.0f} s"
    print(f"{name} ({what})", flush=True)
    result = train_to_budget(
        Peer(name, k),
        PeerLoss(),
        train_ds,
        val_ds,
        params.train,
        budget,
        num_classes=k,
        evals=args.evals,
        device=args.device,
        loader_workers=args.loader_workers,
    )
    return _summary(name, result)


def _summary(name: str, result: dict) -> dict:
    final = result.pop("final")
    last = result["curve"][-1]
    return {
        "model": name,
        **result,
        "tflop": last["tflop"],
        "wall_s": last["wall_s"],
        "val_miou": final["miou"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--budget", type=float, default=240.0, help="TFLOP per model")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--evals", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="e.g. cuda: bf16 where the device computes it")
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/peer.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = measured_peak(args.device)
    params = load_params(args.params)
    compute = Budget(tflop=args.budget)
    spd = [
        run_spd(params, ("seg",), compute, args),
        run_spd(params, params.model.tasks, compute, args),
    ]
    wall = Budget(wall_s=min(r["wall_s"] for r in spd))
    peers = []
    for name in args.peers:
        at_compute = run_peer(params, name, compute, args)
        at_wall = {**at_compute, "same_run": True}
        steps_at_wall = wall.wall_s / at_compute["wall_s"] * at_compute["steps"]
        if abs(steps_at_wall / at_compute["steps"] - 1) > 0.10:
            at_wall = {**run_peer(params, name, wall, args), "same_run": False}
        peers.append({"model": name, "at_compute": at_compute, "at_wall": at_wall})
    out = Path(args.out)
    atomic_write_json(
        out,
        {
            **machine_record(args.threads, peak, args.device),
            "budget_tflop": args.budget,
            "wall_budget_s": wall.wall_s,
            "spd": spd,
            "peers": peers,
        },
    )
    print(f"{'model':34} {'TFLOP':>6} {'wall s':>7} {'val mIoU':>8}")
    rows = [(r["model"], r) for r in spd]
    for p in peers:
        rows += [(f"{p['model']} (compute)", p["at_compute"]), (f"{p['model']} (wall)", p["at_wall"])]
    for name, r in rows:
        print(f"{name:34} {r['tflop']:6.0f} {r['wall_s']:7.0f} {r['val_miou']:8.4f}")


if __name__ == "__main__":
    main()
