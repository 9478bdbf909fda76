"""`deepfit serve`: the API on a tiny image classifier (models, predictions as raw bytes and multipart, explanations),
safety (token, limits, path traversal, bad uploads: JSON errors and the server stays up), a full queue answered 503
with Retry-After, and a bounded load on the loopback address through a real uvicorn server.

The other tasks and modalities are served in the test files that train them (test_explain_detect_segment.py,
test_explain_sound_text.py); the web page in test_serve_browser.py.
"""

from __future__ import annotations

import io
import json
import resource
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import deepfit
from conftest import TrainedRun
from deepfit.cli import main
from deepfit.serve.app import Served, create_app
from deepfit.serve.inputs import Limits


@pytest.fixture(scope="module")
def image(trained_run: TrainedRun) -> bytes:
    return next(trained_run.data.rglob("*.png")).read_bytes()


@pytest.fixture(scope="module")
def client(trained_run: TrainedRun) -> Iterator[TestClient]:
    with TestClient(create_app([trained_run.run_dir], limits=Limits(bytes=200_000, pixels=100_000))) as c:
        yield c


def test_models_and_predictions_match_the_python_api(client: TestClient, trained_run: TrainedRun, image: bytes) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    (model,) = client.get("/v1/models").json()["models"]
    name = trained_run.run_dir.name
    assert model["name"] == name and model["task"] == "classify" and model["modality"] == "image"
    assert model["classes"] == ["2", "10", "ring"] and model["explains"]
    expected = deepfit.load(trained_run.run_dir).predict(Image.open(io.BytesIO(image)))
    for answer in (client.post(f"/v1/models/{name}/predict", content=image),
                   client.post(f"/v1/models/{name}/predict", files={"file": ("anything.bin", image)})):
        assert answer.status_code == 200
        body = answer.json()
        assert body["result"]["label"] == expected.label and abs(body["result"]["probability"] - expected.probability) < 1e-4
        assert [label for label, _ in body["result"]["top"]] == [label for label, _ in expected.top]
        assert body["picture"].startswith("data:image/png;base64,")
    explained = client.post(f"/v1/models/{name}/predict?explain=1", content=image).json()
    assert explained["explanation"].startswith("data:image/png;base64,") and explained["explained"]["method"] == "gradcam"
    assert "/v1/models/{name}/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"this is not an image", 400, "not an image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, 400, "not"),  # a JPEG's first bytes only
    (b"0" * 300_000, 413, "over the limit of 200,000"),
])
def test_bad_uploads_are_json_errors_and_the_server_stays_up(client: TestClient, trained_run: TrainedRun, image: bytes,
                                                             body: bytes, status: int, words: str) -> None:
    name = trained_run.run_dir.name
    answer = client.post(f"/v1/models/{name}/predict", content=body)
    assert answer.status_code == status and words in answer.json()["error"]
    assert client.post(f"/v1/models/{name}/predict", content=image).status_code == 200  # still up


def test_truncated_jpeg_too_many_pixels_unknown_model_and_traversal(client: TestClient, trained_run: TrainedRun) -> None:
    name = trained_run.run_dir.name
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    answer = client.post(f"/v1/models/{name}/predict", content=jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    assert answer.status_code == 400 and "truncated" in answer.json()["error"]
    big = io.BytesIO()
    Image.new("RGB", (400, 400)).save(big, format="PNG")  # 160,000 pixels, over the 100,000 allowed
    answer = client.post(f"/v1/models/{name}/predict", content=big.getvalue())
    assert answer.status_code == 413 and "400 x 400 pixels" in answer.json()["error"]
    answer = client.post("/v1/models/nope/predict", content=b"x")
    assert answer.status_code == 404 and "no model named 'nope'" in answer.json()["error"]
    (trained_run.run_dir.parent / "secret.txt").write_text("TOPSECRET-123")
    for path in ("/runs/../secret.txt", "/runs/..%2Fsecret.txt/report.html", "/runs/%2E%2E/report.html",
                 "/runs/..%2F..%2Fetc%2Fpasswd/report.html", "/static/../app.py", "/static/..%2Fapp.py"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.text != "no", path
    assert client.get("/v1/runs").json()["runs"][0]["name"] == name


def test_a_token_is_needed_on_every_request(trained_run: TrainedRun, image: bytes) -> None:
    with TestClient(create_app([trained_run.run_dir], token="s3cret")) as c:
        name = trained_run.run_dir.name
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for answer in (c.get("/healthz", headers=headers), c.get("/", headers=headers),
                           c.post(f"/v1/models/{name}/predict", content=image, headers=headers)):
                assert answer.status_code == 401 and "token" in answer.json()["error"]
        assert c.get("/healthz", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/models?token=s3cret").status_code == 200


def test_a_full_queue_is_answered_503_with_retry_after_never_lost(trained_run: TrainedRun, image: bytes,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    slow = Served.predict

    def predict(self: Served, items: list) -> list:
        time.sleep(0.2)  # a slow model: requests pile up in the queue
        return slow(self, items)

    monkeypatch.setattr(Served, "predict", predict)
    with TestClient(create_app([trained_run.run_dir], max_batch=1, max_queue=1)) as c:
        url = f"/v1/models/{trained_run.run_dir.name}/predict"
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: c.post(url, content=image), range(8)))
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 503} and all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)
    assert all("busy" in a.json()["error"] for a in answers if a.status_code == 503)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_on_loopback_every_request_answered_and_memory_flat(trained_run: TrainedRun, image: bytes,
                                                                  tmp_path: Path) -> None:
    """500 requests at concurrency 16 through a real uvicorn server on 127.0.0.1: each answered 200 (or 503 with
    Retry-After), with p50/p95 latency and requests/s written down, and the process's memory flat."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app([trained_run.run_dir]), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

        def one(client: httpx.Client) -> tuple[int, float, str | None]:
            started = time.perf_counter()
            answer = client.post(f"{url}/v1/models/{trained_run.run_dir.name}/predict", content=image, timeout=60)
            return answer.status_code, time.perf_counter() - started, answer.headers.get("retry-after")

        with httpx.Client(limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: one(client), range(32)))  # warm up
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            results = list(pool.map(lambda _: one(client), range(500)))
            wall = time.perf_counter() - started
            grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert len(results) == 500 and all(code == 200 or (code == 503 and retry) for code, _, retry in results)
    latencies = sorted(seconds for _, seconds, _ in results)
    figures = {"requests": 500, "concurrency": 16, "ok": sum(code == 200 for code, _, _ in results),
               "requests_per_s": round(500 / wall, 1), "p50_ms": round(1000 * statistics.median(latencies), 1),
               "p95_ms": round(1000 * latencies[int(0.95 * len(latencies))], 1), "peak_rss_growth_mb": round(grown_mb, 1)}
    (tmp_path / "load.json").write_text(json.dumps(figures))
    print(figures)
    assert grown_mb < 100, figures


def test_serve_cli_refuses_bad_limits(trained_run: TrainedRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(trained_run.run_dir), "--max-bytes", "0"]) == 2
    assert "--max-bytes must be at least 1" in capsys.readouterr().err
    assert main(["serve", str(trained_run.run_dir.parent / "missing")]) == 2
