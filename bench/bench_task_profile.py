"""Where a task head's share of the paper profile's training step goes: step time per task set
(interleaved rounds, CPU time) and a torch.profiler breakdown of each, on the CPU.

    python bench/bench_task_profile.py --threads 1                 # {seg,dp} vs {seg,pose,dp}, 128 px
    python bench/bench_task_profile.py --tasks seg,seg+pose --size 96 --rounds 2

The model and loss are params-paper.yaml's (ResNet-101, output stride 8, 256 head channels, the
paper's loss weights and heatmap sigma), AdamW as gpu_paper_profile.py, a random labelled batch
(bench_train_step.random_batch), at a size this CPU can step in seconds (the heads and the
backbone all scale with the pixels, so the shares hardly depend on it). Each head's forward is a
labelled range ("fwd:<part>"); backward and optimizer are ranges too; ops are listed by self CPU
time. The first and last task sets are compared: the extra heads' share of the time and of the
FLOPs. Writes bench/results/task_profile.json next to the measured peak.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train_step import PRECISIONS, machine, measured_peaks, random_batch  # noqa: E402

from spd.io import atomic_write_json  # noqa: E402
from spd.losses import SPDLoss  # noqa: E402
from spd.model import build_model  # noqa: E402

PROFILED_PARTS = ("backbone", "neck", "pose_head", "dp_head", "seg_head")
REGIONS = ("forward", "loss", "backward", "optimizer", "fwd:")  # labelled ranges (loss:<task> too)


class _Range:
    """Forward pre / post hooks opening and closing a profiler range named `name`."""

    def __init__(self, name: str) -> None:
        self.name, self.open = name, []

    def enter(self, module: torch.nn.Module, args: tuple) -> None:
        from torch.profiler import record_function

        self.open.append(record_function(self.name))
        self.open[-1].__enter__()

    def exit(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.open.pop().__exit__(None, None, None)


def _label_forwards(model: torch.nn.Module, criterion: torch.nn.Module) -> None:
    """Name each part's forward ("fwd:<part>") and each task loss ("loss:<task>") in the profile;
    the heads are called through methods (initial / refined), so their hooks go on their children."""
    labelled = [(f"loss:{t}", getattr(criterion, t)) for t in ("seg", "pose", "densepose")]
    for part in PROFILED_PARTS:
        module = getattr(model, part, None)
        children = [module] if part in ("backbone", "neck") else list(getattr(module, "children", list)())
        labelled += [(f"fwd:{part}", child) for child in children]
    for name, module in labelled:
        if module is not None:
            r = _Range(name)
            module.register_forward_pre_hook(r.enter)
            module.register_forward_hook(r.exit)


def paper_step(tasks: tuple[str, ...], args: argparse.Namespace) -> tuple[Callable[[], None], int]:
    """The paper profile's training step (params-paper.yaml's model and loss; AdamW as
    gpu_paper_profile.py) at args.size / args.batch, labelled for the profiler; its FLOPs."""
    from torch.profiler import record_function

    from pipeline.config import load_params
    from spd.config import replace
    from spd.engine import build_optimizer

    params = load_params(ROOT / "params-paper.yaml")
    cfg = replace(params.model, pretrained=None, tasks=tasks)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=20).train()
    dtype, channels_last = PRECISIONS[args.precision]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = SPDLoss.from_config(cfg.tasks, params.loss)
    optimizer = build_optimizer(model, replace(params.train, optimizer="adamw"))
    batch = random_batch(args.batch, args.size, 20, torch.device("cpu"))
    x = batch["image"].contiguous(memory_format=torch.channels_last) if channels_last else batch["image"]

    def step() -> None:
        amp = torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)
        with record_function("forward"), amp:
            out = model(x)
        with record_function("loss"):
            loss, _ = criterion(out, batch)
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    _label_forwards(model, criterion)
    return step, counter.get_total_flops()


def _profile(step: Callable[[], None], steps: int) -> dict[str, float]:
    """Milliseconds per step: labelled ranges (total) and every op over 0.05 ms (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    ranges = {e.key: e.cpu_time_total for e in events if e.key.startswith(REGIONS)}
    ops = sorted(
        ((e.key, e.self_cpu_time_total) for e in events if not e.key.startswith(REGIONS)),
        key=lambda kv: -kv[1],
    )
    return {
        k: round(v / 1e3 / steps, 2) for k, v in [*sorted(ranges.items()), *ops] if v / 1e3 / steps >= 0.05
    }


def profile_task_sets(args: argparse.Namespace) -> dict:
    """Step time of each task set (interleaved rounds) and where the difference goes (profiles).
    Timed in CPU time of this process: on a shared machine its wall time includes waiting for a core
    (the profiler's op times do, so they locate costs but do not compare task sets)."""
    sets = [tuple(t.split("+")) for t in args.tasks.split(",")]
    steps = {t: paper_step(t, args) for t in sets}
    times: dict[tuple, list[float]] = {t: [] for t in sets}
    for _ in range(args.rounds):
        for t, (step, _) in steps.items():
            step()  # warm-up
            start = time.process_time()
            for _ in range(args.steps):
                step()
            times[t].append((time.process_time() - start) / args.steps * 1e3)
    out = {}
    for t, (step, flops) in steps.items():
        ms = sorted(times[t])
        regions = _profile(step, args.profile_steps)
        out["+".join(t)] = {
            "step_cpu_ms_median": round(ms[len(ms) // 2], 1),
            "step_cpu_ms_min_max": [round(ms[0], 1), round(ms[-1], 1)],
            "step_cpu_ms_rounds": [round(x, 1) for x in times[t]],
            "gflop_per_step": round(flops / 1e9, 2),
            "profile_ms_per_step": regions,
        }
        print(f"{'+'.join(t):22s} {ms[len(ms) // 2]:8.1f} CPU ms/step {flops / 1e9:8.1f} GFLOP", flush=True)
    return out


def write_task_profile(args: argparse.Namespace) -> int:
    """The task sets' step times and profiles, next to the measured peak."""
    load_before = os.getloadavg()
    peaks = measured_peaks(torch.device("cpu"))
    sets = profile_task_sets(args)
    names = list(sets)
    first, last = sets[names[0]], sets[names[-1]]
    share = {
        "time": round(1 - first["step_cpu_ms_median"] / last["step_cpu_ms_median"], 3),
        "flops": round(1 - first["gflop_per_step"] / last["gflop_per_step"], 3),
        "of": f"{names[-1]} over {names[0]}",
    }
    print(
        f"{names[-1]} vs {names[0]}: {share['time']:.1%} of the step time, {share['flops']:.1%} of its FLOPs"
    )
    report = {
        "command": " ".join(["python", *sys.argv]),
        "settings": vars(args),
        "model": "params-paper.yaml model + loss (ResNet-101, OS 8, 256 head channels); AdamW",
        "machine": machine(load_before),
        "peak_flop_per_s": peaks,
        "task_sets": sets,
        "share": share,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="seg+densepose,seg+pose+densepose", help="task sets, first = base")
    ap.add_argument("--size", type=int, default=128, help="image size (the paper's is 384)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="bf16 only where native")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per task set per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile-steps", type=int, default=2, help="steps under torch.profiler")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "task_profile.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return write_task_profile(args)


if __name__ == "__main__":
    raise SystemExit(main())
