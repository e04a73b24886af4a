"""The registered pyfunc as a registry consumer uses it: any image in, a label map at its size out."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.fixtures.serving import free_port, start_server, stop_process_group

MAX_PIXELS = 7_000_000  # above 3000 x 2000, below the oversized test image


@pytest.fixture(scope="module")
def logged_model(tiny_model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The tiny model logged and registered in a fresh sqlite store -> (tracking URI, models:/ URI)."""
    import mlflow

    from pipeline import serving

    work = tmp_path_factory.mktemp("serving_store")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serving-test", artifact_location=(work / "mlartifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        options = serving.ServingOptions(max_pixels=MAX_PIXELS, model_name="spd-serving-test")
        info = serving.log_pyfunc(tiny_model_file, options)
    mlflow.MlflowClient(uri).set_registered_model_alias(
        "spd-serving-test", "champion", info.registered_model_version
    )
    return uri, "models:/spd-serving-test@champion"


@pytest.fixture(scope="module")
def pyfunc(logged_model: tuple[str, str]):
    import mlflow

    uri, model_uri = logged_model
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def test_pyfunc_returns_a_label_map_at_each_inputs_own_size(pyfunc) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "rgb": rng.integers(0, 256, (45, 70, 3), dtype=np.uint8),
        "grayscale": rng.integers(0, 256, (33, 21), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (40, 40, 4), dtype=np.uint8),
        "one pixel": np.full((1, 1, 3), 128, np.uint8),
        "3000x2000": rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8),
    }
    for name, image in cases.items():
        out = pyfunc.predict(image)
        assert isinstance(out, np.ndarray), name
        assert out.shape == image.shape[:2], name
        assert out.dtype == np.uint8 and out.max() < 20, name

    batch = [cases["rgb"], cases["grayscale"], cases["one pixel"]]
    maps = pyfunc.predict(batch)
    assert [m.shape for m in maps] == [im.shape[:2] for im in batch]
    # A batch gives what each image gives alone.
    np.testing.assert_array_equal(maps[0], pyfunc.predict(cases["rgb"]))
    stacked = pyfunc.predict(np.stack([cases["rgb"], cases["rgb"][::-1].copy()]))
    assert stacked.shape == (2, 45, 70)
    assert pyfunc.predict(cases["rgb"], params={"flip_tta": True}).shape == (45, 70)


def test_pyfunc_dataframe_of_encoded_images_returns_png_masks(pyfunc) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    ok, jpg = cv2.imencode(".jpg", image)
    frame = pd.DataFrame({"image": [png_bytes(image), base64.b64encode(jpg.tobytes()).decode()]})
    out = pyfunc.predict(frame)
    assert list(out.columns) == ["mask", "height", "width"]
    for mask_png, h, w in out.itertuples(index=False):
        mask = cv2.imdecode(np.frombuffer(mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) == (50, 30)
    direct = pyfunc.predict(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))  # cv2 encoded BGR order
    np.testing.assert_array_equal(
        cv2.imdecode(np.frombuffer(out["mask"][0], np.uint8), cv2.IMREAD_UNCHANGED), direct
    )


def test_pyfunc_rejects_oversized_and_non_images_with_a_clear_message(pyfunc) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="above the limit of 7000000"):
        pyfunc.predict(np.zeros((3000, 3000, 3), np.uint8))
    with pytest.raises(MlflowException, match=r"image\[1\]: not an image"):
        pyfunc.predict(pd.DataFrame({"image": [png_bytes(np.zeros((8, 8, 3), np.uint8)), b"not a png"]}))
    # An encoded image is refused from its header, before its pixels are allocated.
    big = png_bytes(np.zeros((3000, 3000), np.uint8))
    with pytest.raises(MlflowException, match=r"image\[0\]: 3000x3000 = 9000000 pixels is above the limit"):
        pyfunc.predict(pd.DataFrame({"image": [big]}))
    with pytest.raises(MlflowException, match="expected a uint8 or uint16 image"):
        pyfunc.predict(np.zeros((8, 8, 3), np.float64))


def test_pyfunc_records_its_input_example_signature_and_pinned_requirements(logged_model) -> None:
    import mlflow

    uri, model_uri = logged_model
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    reqs = (local / "requirements.txt").read_text().split()
    pinned = ("torch", "torchvision", "numpy", "opencv-python-headless", "mlflow", "pyyaml")
    for pkg in (*pinned, "onnxruntime", "onnx"):  # onnx*: the default backend's runtime and exporter
        assert any(r.startswith(f"{pkg}==") for r in reqs), (pkg, reqs)
    assert (local / "code" / "spd" / "predict.py").is_file()
    assert (local / "code" / "pipeline" / "serving.py").is_file()
    info = mlflow.models.get_model_info(model_uri)
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["mask", "height", "width"]
    config = json.loads(next((local / "artifacts").glob("serving*.json")).read_text())
    assert config["max_pixels"] == MAX_PIXELS and len(config["classes"]) == 20
    assert config["backend"] == "auto"


def test_pyfunc_runs_the_network_on_onnx_runtime_unless_told_torch(logged_model, pyfunc) -> None:
    import mlflow

    uri, model_uri = logged_model
    mlflow.set_tracking_uri(uri)
    eager = mlflow.pyfunc.load_model(model_uri, model_config={"backend": "torch"})
    assert pyfunc.unwrap_python_model().predictor.backend == "onnx"  # the serving config's auto, on CPU
    assert eager.unwrap_python_model().predictor.backend == "torch"
    image = np.random.default_rng(2).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    for flip_tta in (False, True):
        a, b = (m.predict(image, params={"flip_tta": flip_tta}) for m in (pyfunc, eager))
        assert np.mean(a == b) >= 0.999


@pytest.fixture(scope="module")
def served(logged_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of the registered model on 127.0.0.1 (one worker, which answers on
    several threads); yields its base URL, stopped by its PID."""
    uri, model_uri = logged_model
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
        "--host", "127.0.0.1", "-p", str(port), "--workers", "1",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = start_server(cmd, f"{base}/ping", log, env={"MLFLOW_TRACKING_URI": uri})
    try:
        yield base
    finally:
        stop_process_group(proc)
    assert subprocess.run(["kill", "-0", str(proc.pid)], capture_output=True).returncode != 0


def frame_body(images: list[np.ndarray], params: dict | None = None) -> dict:
    rows = [[base64.b64encode(png_bytes(im)).decode()] for im in images]
    body: dict = {"dataframe_split": {"columns": ["image"], "data": rows}}
    if params is not None:
        body["params"] = params
    return body


def decoded_masks(reply: dict) -> list[np.ndarray]:
    return [
        cv2.imdecode(np.frombuffer(base64.b64decode(row["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
        for row in reply["predictions"]
    ]


@pytest.mark.slow
def test_rest_round_trip_through_mlflow_models_serve(served: str) -> None:
    """An encoded image gets its mask; a bad one gets 400 naming the problem, and serving goes on."""
    image = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    reply = post_json(f"{served}/invocations", frame_body([image]))
    [mask] = decoded_masks(reply)
    assert mask.shape == (37, 53) == (reply["predictions"][0]["height"], reply["predictions"][0]["width"])

    bad = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"hello").decode()]]}}
    with pytest.raises(urllib.error.HTTPError) as err:
        post_json(f"{served}/invocations", bad)
    assert err.value.code == 400
    assert "image[0]: not an image" in json.loads(err.value.read())["message"]
    # The server survived the bad request.
    assert post_json(f"{served}/invocations", frame_body([image]))["predictions"][0]["height"] == 37


@pytest.mark.slow
def test_concurrent_requests_with_different_options_each_get_their_own_answer(served: str) -> None:
    """8 client threads send interleaved requests, half with flip_tta on: every answer equals the
    same request served alone (the scoring server runs requests on several threads at once, so an
    option kept in shared state would leak into another client's answer)."""
    from spd.data.synth import generate_sample

    rng = np.random.default_rng(5)
    photos = [generate_sample(rng, image_size=s).image for s in (48, 64, 80, 96)]
    requests = [(i, flip) for i in range(len(photos)) for flip in (False, True)]

    def serve(i: int, flip: bool) -> list[np.ndarray]:
        body = frame_body([photos[i]], {"flip_tta": flip})
        return decoded_masks(post_json(f"{served}/invocations", body))

    alone = {(i, flip): serve(i, flip) for i, flip in requests}
    # The check can fail: the option changes the answer for these photos.
    assert any(not np.array_equal(alone[(i, False)][0], alone[(i, True)][0]) for i in range(len(photos)))

    schedule = [requests[k] for k in rng.permutation(np.arange(80) % len(requests))]

    def ask(request: tuple[int, bool]) -> bool:
        masks = serve(*request)
        return all(np.array_equal(m, r) for m, r in zip(masks, alone[request], strict=True))

    with ThreadPoolExecutor(max_workers=8) as pool:
        same = list(pool.map(ask, schedule))
    assert sum(not ok for ok in same) == 0, f"{sum(not ok for ok in same)} of {len(same)} answers differ"


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())
