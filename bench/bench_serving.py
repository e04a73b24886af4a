"""Load on the real `mlflow models serve`: throughput, latency percentiles, errors, wrong answers, RSS.

    python bench/bench_serving.py                                  # knobs w1t1,w1t2,w2t1; 1,2,4,8 clients
    python bench/bench_serving.py --knobs w1t1 --clients 8 --seconds 30

For each serving knob `w<W>t<T>` (W uvicorn worker processes, T torch intra-op threads in each, the
serving config's torch_threads) the model is logged as `spd register` logs it (models from code,
serving config) into a throw-away sqlite store and served on 127.0.0.1 with `--env-manager local`;
the server is stopped by its process group's PID. N client threads (1, 2, 4, 8) then send requests
for a bounded time from a fixed schedule: JPEG photos at 512x512 and 1920x1080, half with
params.flip_tta, and every 10th request a bad one (bytes that are not an image, a truncated JPEG,
an image above max_pixels). Every 200 answer is compared with the answer to the same request sent
alone before the load (a wrong answer); a bad request must get HTTP 400 whose message names the
problem; anything else is an error. Latency is client-side, per request, good requests only.
Server peak RSS: the sum of VmHWM over the server's processes.

Model: as bench_inference.py (random init of params.yaml's model unless --model). The machine may be
shared: its load average before and after each run is in the JSON (bench/results/serving.json).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_inference import load_model, photos  # noqa: E402
from bench_train_step import machine, measured_peaks  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from tests.fixtures.serving import free_port, start_server, stop_process_group  # noqa: E402

MAX_PIXELS = 4_000_000  # above 1920 x 1080, below the oversized bad request
BAD_EVERY = 10


def encoded_requests() -> tuple[list[tuple[str, bytes, dict]], list[tuple[str, bytes, str]]]:
    """(good: (name, body, params), bad: (name, body, expected message part))."""
    good = []
    for size, name in (((512, 512), "512x512"), ((1080, 1920), "1920x1080")):
        for k, image in enumerate(photos(size, 2, seed=10 + size[0])):
            ok, jpg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            for flip in (False, True):
                good.append((f"{name}#{k} flip={flip}", body_of(jpg.tobytes(), {"flip_tta": flip})))
    ok, jpg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    ok, big = cv2.imencode(".png", np.zeros((2100, 2100), np.uint8))
    bad = [
        ("not an image", body_of(b"hello, not an image", None), "image[0]: not an image"),
        ("truncated jpeg", body_of(jpg.tobytes()[: len(jpg) // 2], None), "truncated JPEG"),
        ("oversized", body_of(big.tobytes(), None), f"above the limit of {MAX_PIXELS}"),
    ]
    return [(n, b, {}) for n, b in good], bad


def body_of(data: bytes, params: dict | None) -> bytes:
    body: dict = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode()]]}}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


def post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def serve(model_dir: str, workers: int, log: Path, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_dir, "--env-manager", "local",
        "--host", "127.0.0.1", "-p", str(port), "--workers", str(workers),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    return start_server(cmd, f"{base}/ping", log, env=env, timeout_s=600), base


def peak_rss_bytes(leader: int) -> int:
    """Sum of VmHWM (peak resident set) over the processes of the server's process group."""
    pids = subprocess.run(["ps", "-o", "pid=", "-g", str(leader)], capture_output=True, text=True).stdout
    total = 0
    for pid in pids.split():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def drive(url: str, clients: int, seconds: float, good: list, bad: list, reference: dict) -> dict:
    """`clients` threads, each taking the next request of the shared schedule until time is up."""
    lock, counter = threading.Lock(), [0]
    latencies, errors, wrong, bad_ok = [], [], [], [0]
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                k = counter[0]
                counter[0] += 1
            if k % BAD_EVERY == BAD_EVERY - 1:
                name, body, expect = bad[(k // BAD_EVERY) % len(bad)]
                status, reply = post(url, body)
                if status == 400 and expect in json.loads(reply).get("message", ""):
                    with lock:
                        bad_ok[0] += 1
                else:
                    errors.append(f"{name}: HTTP {status} {reply[:200]!r}")
                continue
            name, body, _ = good[k % len(good)]
            start = time.perf_counter()
            status, reply = post(url, body)
            elapsed = time.perf_counter() - start
            if status != 200:
                errors.append(f"{name}: HTTP {status} {reply[:200]!r}")
            elif json.loads(reply)["predictions"] != reference[name]:
                wrong.append(name)
            else:
                latencies.append(elapsed)

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    lat = np.array(latencies) if latencies else np.array([np.nan])
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return {
        "clients": clients,
        "seconds": elapsed,
        "good_answers": len(latencies),
        "bad_requests_answered_400": bad_ok[0],
        "requests_per_s": len(latencies) / elapsed,
        "p50_s": p50,
        "p95_s": p95,
        "p99_s": p99,
        "p99_over_p50": p99 / p50,
        "errors": len(errors),
        "wrong_answers": len(wrong),
        "error_samples": errors[:5],
    }


def bench_knob(knob: str, model_file: Path, args: argparse.Namespace, work: Path) -> dict:
    import mlflow

    from pipeline import serving

    workers, threads = (int(v) for v in knob[1:].split("t"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.set_experiment(f"bench-serving-{knob}")
    options = serving.ServingOptions(max_pixels=MAX_PIXELS, device="cpu", torch_threads=threads)
    with mlflow.start_run(experiment_id=exp.experiment_id):
        info = serving.log_pyfunc(model_file, options)
    model_dir = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(work / knob))
    env = {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": str(threads)}
    proc, base = serve(model_dir, workers, work / f"serve-{knob}.log", env)
    try:
        good, bad = encoded_requests()
        url = f"{base}/invocations"
        reference = {}
        for name, body, _ in good:  # each request alone: the answers every later one must equal
            status, reply = post(url, body)
            if status != 200:
                raise RuntimeError(f"reference request {name}: HTTP {status} {reply[:300]!r}")
            reference[name] = json.loads(reply)["predictions"]
        runs = []
        for clients in (int(c) for c in args.clients.split(",")):
            load = os.getloadavg()
            r = drive(url, clients, args.seconds, good, bad, reference)
            r["load_average_before"], r["load_average_after"] = list(load), list(os.getloadavg())
            runs.append(r)
            print(
                f"{knob} {clients} clients: {r['requests_per_s']:.2f} req/s, p50 {r['p50_s'] * 1e3:.0f} ms, "
                f"p95 {r['p95_s'] * 1e3:.0f} ms, p99 {r['p99_s'] * 1e3:.0f} ms (p99/p50 "
                f"{r['p99_over_p50']:.2f}), errors {r['errors']}, wrong {r['wrong_answers']}, bad->400 "
                f"{r['bad_requests_answered_400']}, load {load[0]:.1f}",
                flush=True,
            )
        rss = peak_rss_bytes(proc.pid)
    finally:
        stop_process_group(proc)
    print(f"{knob}: server peak RSS {rss / 2**20:.0f} MiB")
    return {"workers": workers, "torch_threads": threads, "server_peak_rss_bytes": rss, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="spd model file (default: random init, as bench_inference)")
    ap.add_argument("--knobs", default="w1t1,w1t2,w2t1", help="w<workers>t<torch threads>, comma-separated")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--seconds", type=float, default=20.0, help="load time per client count")
    ap.add_argument("--out", default=str(ROOT / "bench/results/serving.json"))
    args = ap.parse_args(argv)
    import torch

    from spd.model import save_model_file

    cpu = torch.device("cpu")
    load_before = os.getloadavg()
    peaks = measured_peaks(cpu, bf16=False)  # at the start, next to the numbers it bounds
    model, info, model_desc = load_model(args)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        model_file = work / "spd.pt"
        cfg = info.get("model_cfg") or load_params(ROOT / "params.yaml").model
        save_model_file(model_file, model, cfg, info["num_classes"], info["label_set"], info["image_size"])
        knobs = {knob: bench_knob(knob, model_file, args, work) for knob in args.knobs.split(",")}
    report = {
        "machine": machine(load_before),
        "peak_flop_per_s": peaks,
        "model": model_desc,
        "requests": "JPEG q90 photos 512x512 and 1920x1080 (2 each), flip_tta on/off; every "
        f"{BAD_EVERY}th request bad (not an image / truncated JPEG / oversized)",
        "max_pixels": MAX_PIXELS,
        "seconds_per_level": args.seconds,
        "knobs": knobs,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
