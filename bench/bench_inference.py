"""End-to-end prediction throughput: the predictor as it was (git revision) against today's, one run.

    python bench/bench_inference.py                         # default: random-init default model
    python bench/bench_inference.py --model models/spd.pt --rounds 5
    python bench/bench_inference.py --backend torch        # the new path with PyTorch's forward

Both paths get the same model object and the same photos, in the same process, alternating round by
round (the machine is shared: alternation spreads load changes over both). A round predicts every
photo once with each path (`Predictor.predict`: colour conversion, letterbox, forward, mapping back;
decoding the file is not timed). Modes: `labels` (iuv=False: labels and, with a pose head, joints)
and `full` (labels, joints and the DensePose IUV map at the photo's size).

The new path runs the network on --backend (default onnx: ONNX Runtime on the CPU, spd.backends;
its export at load is not timed). The baseline is `spd/predict.py` read from git at --baseline-rev
(default: the commit before the fast path), so the comparison is with the old code itself, not a
copy. Agreement: the fraction of pixels whose label (and DensePose part) equals the baseline's;
mean |U|, |V| difference in 1/255; largest joint displacement in pixels. Speed-ups: the median of
per-round wall-time ratios, the ratio of each path's fastest round, and the ratio of median CPU
time (this process, all threads), which waiting for a shared machine's cores does not inflate.

Photos: people drawn by the project's generator (spd.data.synth) at the photo's long side, resized
to exactly 512x512 and 1920x1080 and passed through a JPEG (quality 90) round trip.

Writes bench/results/inference.json with the machine's measured peak (bench_train_step's kernels)
and load average. With CUDA present it also times the paper profile (params-paper.yaml's model,
384 px) on the GPU; without, it says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train_step import machine, measured_peaks  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from spd.config import ModelConfig  # noqa: E402
from spd.data.synth import generate_sample  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from spd.labels import NUM_LIP_CLASSES  # noqa: E402
from spd.model import build_model, load_model_file  # noqa: E402
from spd.predict import Predictor  # noqa: E402

SIZES = {"512x512": (512, 512), "1920x1080": (1080, 1920)}  # name -> (H, W)
BASELINE_REV = "18331cd"  # main before the fast path (issue 15), already fp32 on CPUs without bf16


def baseline_module(rev: str, source_path: str = "spd/predict.py"):  # noqa: ANN201 - a module object
    """`source_path` as it was at git `rev`, imported under another name (baseline_<stem>)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{source_path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    name = f"baseline_{Path(source_path).stem}"
    path = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photos(size: tuple[int, int], count: int, seed: int) -> list[np.ndarray]:
    """Photo-like RGB people at exactly (H, W), JPEG q90 round trip."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        person = generate_sample(rng, image_size=max(size), dense=False).image
        image = cv2.resize(person, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        ok, jpg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(cv2.imdecode(jpg, cv2.IMREAD_COLOR)[:, :, ::-1].copy())
    return out


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, str]:
    if args.model:
        model, info = load_model_file(args.model)
        return model, info, f"model file {args.model}"
    cfg = load_params(ROOT / "params.yaml").model
    torch.manual_seed(0)
    model = build_model(cfg, NUM_LIP_CLASSES).eval()
    info = {"image_size": 128, "num_classes": NUM_LIP_CLASSES, "label_set": "lip"}
    return model, info, "random init (torch seed 0) of params.yaml's model at 128 px (untrained)"


def time_round(predictor, images: list[np.ndarray], iuv: bool) -> tuple[float, float, list]:  # noqa: ANN001
    """(wall seconds, CPU seconds of this process (all its threads), predictions)."""
    start, cpu = time.perf_counter(), time.process_time()
    preds = [predictor.predict(im, iuv=iuv) for im in images]
    return time.perf_counter() - start, time.process_time() - cpu, preds


def agreement(old: list, new: list, iuv: bool) -> dict[str, float]:
    labels = np.concatenate([(a.labels == b.labels).ravel() for a, b in zip(old, new)])
    out = {"label_agreement": float(labels.mean())}
    if old[0].joints is not None:
        out["joint_max_px"] = float(
            max(np.abs(a.joints[:, :2] - b.joints[:, :2]).max() for a, b in zip(old, new))
        )
    if iuv and old[0].iuv is not None:
        part = np.concatenate([(a.iuv[..., 0] == b.iuv[..., 0]).ravel() for a, b in zip(old, new)])
        both = [(a.iuv[..., 0] > 0) & (a.iuv[..., 0] == b.iuv[..., 0]) for a, b in zip(old, new)]
        uv = [np.abs(a.iuv[m][:, 1:].astype(int) - b.iuv[m][:, 1:]).mean() for a, b, m in zip(old, new, both)]
        out |= {"part_agreement": float(part.mean()), "uv_mean_abs_diff_255": float(np.mean(uv))}
    return out


def bench_case(old_p, new_p, images: list[np.ndarray], iuv: bool, rounds: int) -> dict:  # noqa: ANN001
    times, cpu = {"baseline": [], "new": []}, {"baseline": [], "new": []}
    agree = None
    for r in range(rounds):
        order = [("baseline", old_p), ("new", new_p)][:: 1 if r % 2 == 0 else -1]
        preds = {}
        for name, p in order:
            seconds, cpu_seconds, preds[name] = time_round(p, images, iuv)
            times[name].append(seconds)
            cpu[name].append(cpu_seconds)
        if agree is None:
            agree = agreement(preds["baseline"], preds["new"], iuv)
    speedups = [b / n for b, n in zip(times["baseline"], times["new"])]
    return {
        "images_per_round": len(images),
        "baseline_images_per_s": len(images) / float(np.median(times["baseline"])),
        "new_images_per_s": len(images) / float(np.median(times["new"])),
        "round_seconds": times,
        "speedup": float(np.median(speedups)),
        "speedup_min_max": [float(min(speedups)), float(max(speedups))],
        # each path's least-disturbed round: on a shared machine the closest to its own speed
        "speedup_fastest_rounds": float(min(times["baseline"]) / min(times["new"])),
        # CPU time is not inflated by waiting for the cores, only by contention for caches
        "round_cpu_seconds": cpu,
        "speedup_cpu": float(np.median(cpu["baseline"]) / np.median(cpu["new"])),
        **agree,
    }


def gpu_paper_profile(images: dict[str, list[np.ndarray]]) -> dict:
    if not torch.cuda.is_available():
        print("GPU: skipped, no CUDA device on this machine")
        return {"skipped": "no CUDA device on this machine"}
    cfg: ModelConfig = load_params(ROOT / "params-paper.yaml").model
    torch.manual_seed(0)
    model = build_model(cfg, NUM_LIP_CLASSES)
    p = Predictor(
        model, {"image_size": 384, "num_classes": NUM_LIP_CLASSES, "label_set": "lip"}, device="cuda"
    )
    out = {
        "model": f"{cfg.backbone} OS {cfg.output_stride}, 384 px, random init",
        "device": torch.cuda.get_device_name(),
    }
    for name, ims in images.items():
        time_round(p, ims, iuv=False)  # warm-up
        torch.cuda.synchronize()
        seconds, _, _ = time_round(p, ims * 4, iuv=False)
        out[f"{name}_labels_images_per_s"] = 4 * len(ims) / seconds
        print(f"GPU paper profile {name} labels: {out[f'{name}_labels_images_per_s']:.1f} img/s")
    return out


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("torch", "onnxruntime", "onnx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="spd model file (default: random init, see --help)")
    ap.add_argument("--images", type=int, default=3, help="photos per size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--backend", default="onnx", choices=["auto", "torch", "onnx"], help="the new path's")
    ap.add_argument("--out", default=str(ROOT / "bench/results/inference.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    device = torch.device("cpu")
    peaks = measured_peaks(device)
    model, info, model_desc = load_model(args)
    old_p = baseline_module(args.baseline_rev).Predictor(model, info)
    start = time.perf_counter()
    new_p = Predictor(model, info, backend=args.backend)
    load_s = time.perf_counter() - start  # with onnx: export, session, check against torch
    print(
        f"model: {model_desc}; new path: backend {new_p.backend} (set up in {load_s:.1f} s), "
        f"autocast {new_p.autocast_dtype}"
    )
    images = {name: photos(size, args.images, seed=k) for k, (name, size) in enumerate(SIZES.items())}
    cases = {}
    for name, ims in images.items():
        for mode in ("labels", "full"):
            r = bench_case(old_p, new_p, ims, iuv=mode == "full", rounds=args.rounds)
            cases[f"{name}/{mode}"] = r
            print(
                f"{name:9s} {mode:6s} baseline {r['baseline_images_per_s']:6.2f} img/s  new "
                f"{r['new_images_per_s']:6.2f} img/s  speedup {r['speedup']:.2f}x "
                f"[{r['speedup_min_max'][0]:.2f}, {r['speedup_min_max'][1]:.2f}] "
                f"fastest rounds {r['speedup_fastest_rounds']:.2f}x CPU time {r['speedup_cpu']:.2f}x  "
                f"label agreement {r['label_agreement']:.4%}",
                flush=True,
            )
    report = {
        "machine": machine(load_before),
        "peak_flop_per_s": peaks,
        "model": model_desc,
        "photos": "spd.data.synth people resized to the exact size, JPEG q90 round trip",
        "baseline": f"spd/predict.py at git {args.baseline_rev}",
        "new_autocast": str(new_p.autocast_dtype),
        "new_backend": new_p.backend,
        "new_setup_seconds": load_s,
        "versions": versions(),
        "command": " ".join(
            ["python", "bench/bench_inference.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "cases": cases,
        "speedup": {k: v["speedup"] for k, v in cases.items()},
        "gpu_paper_profile": gpu_paper_profile(images),
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
