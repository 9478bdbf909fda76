"""The web page of `deepfit serve` in a real browser: Chromium (Debian's, driven by Playwright) against the real
server (uvicorn in a thread) serving the tiny shapes classifier. An upload is labelled as `deepfit.load` labels it,
the fake webcam streams predictions, the runs tab lists the runs and opens their reports, and a token travels
from the page's URL to its files and requests.

DEEPFIT_SCREENSHOT=1 also writes the screenshot of a prediction to docs/serve/page.png (the README's picture).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import TrainedRun, shape_image

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TOKEN = "s3cret-token"
DOCS_PICTURE = Path(__file__).resolve().parents[1] / "docs" / "serve" / "page.png"

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


# --- the server and the browser -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real app on uvicorn in a background thread, on a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/healthz", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def write_y4m(path: Path, picture: Image.Image, frames: int = 10) -> Path:
    """A still video for Chromium's fake camera: YUV4MPEG2, 4:2:0 with full-range (JPEG) YCbCr."""
    width, height = picture.size
    y, cb, cr = picture.convert("RGB").convert("YCbCr").split()
    half = (width // 2, height // 2)
    planes = y.tobytes() + cb.resize(half, Image.Resampling.BILINEAR).tobytes() + cr.resize(half, Image.Resampling.BILINEAR).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + planes)
    return path


@pytest.fixture(scope="module")
def runs_folder(evaluated_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two evaluated runs side by side (each with its report.html), as `deepfit serve --runs-folder` lists them."""
    folder = tmp_path_factory.mktemp("serve-runs")
    shutil.copytree(evaluated_run, folder / "shapes")
    shutil.copytree(evaluated_run, folder / "shapes-again")
    return folder


@pytest.fixture(scope="module")
def server(runs_folder: Path) -> Iterator[Server]:
    from deepfit.serve.app import create_app

    with Server(create_app([runs_folder / "shapes"], runs_folder=runs_folder)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, its fake camera showing a large red square (class "2")."""
    from playwright.sync_api import sync_playwright

    video = write_y4m(tmp_path_factory.mktemp("camera") / "square.y4m", shape_image(0, 0, size=64))
    camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={video}"]
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS + camera)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert not errors, f"the page raised: {errors}"


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert page.locator("#status").inner_text() == "ready"


def predict_file(page: Any, path: Path) -> str:
    before = int(page.locator("#count").inner_text())
    page.set_input_files("#file", str(path))
    page.wait_for_function(f"Number(document.getElementById('count').textContent) > {before}")
    return page.locator("#label").inner_text()


# --- the tests --------------------------------------------------------------------------------------


def test_upload_shows_the_label_the_run_predicts(page: Any, server: Server, trained_run: TrainedRun) -> None:
    import deepfit

    open_page(page, server.url)
    assert page.locator("#model").input_value() == "shapes"
    assert not page.locator("#webcam").is_hidden()
    assert page.locator("#microphone").is_hidden() and page.locator("#text-input").is_hidden()
    learner = deepfit.load(trained_run.run_dir)
    for path in sorted(trained_run.data.glob("*/img0.png")):
        expected = learner.predict(path)
        assert predict_file(page, path) == expected.label
        assert page.locator("#probability").inner_text() == f"{100 * expected.probability:.{1 if expected.probability >= 0.1 else 2}f} %"
    # the top-k bars, and the input with the label drawn on it
    assert page.locator("#bars .bar").count() == 3
    assert page.locator("#picture").get_attribute("src").startswith("data:image/png;base64,")
    assert page.locator("#error").is_hidden()


def test_a_bad_upload_shows_the_servers_error(page: Any, server: Server, tmp_path: Path) -> None:
    open_page(page, server.url)
    junk = tmp_path / "notes.png"
    junk.write_text("not an image at all")
    page.set_input_files("#file", str(junk))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.locator("#error").inner_text()
    assert page.locator("#status").inner_text() == "failed"


def test_webcam_frames_are_predicted_live(page: Any, server: Server) -> None:
    open_page(page, server.url)
    page.click("#webcam")
    page.wait_for_function("Number(document.getElementById('count').textContent) >= 2", timeout=30_000)
    assert page.locator("#webcam").inner_text() == "Stop webcam"
    assert page.locator("#label").inner_text() in {"2", "10", "ring"}
    assert page.locator("#picture").get_attribute("src").startswith("data:image/png;base64,")
    page.click("#webcam")  # stops: no frame is sent after the last answer
    assert page.locator("#webcam").inner_text() == "Webcam"
    assert page.locator("#video").is_hidden()


def test_runs_tab_lists_runs_and_opens_reports(page: Any, server: Server) -> None:
    open_page(page, server.url)
    page.click("#tab-runs")
    rows = page.locator("#runs-table tbody tr")
    rows.first.wait_for()
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.run)")) == ["shapes", "shapes-again"]
    row = page.locator('#runs-table tr[data-run="shapes"]')
    assert row.locator(".col-task").inner_text() == "classify"
    assert "accuracy" in row.locator(".col-metric").inner_text()
    with page.expect_popup() as popup_info:
        row.locator("a.report-link").click()
    report = popup_info.value
    report.wait_for_load_state()
    assert "deepfit evaluation" in report.title()
    assert report.url.endswith("/runs/shapes/report.html")
    # side by side: the two selects start on two different runs, each frame showing its report
    assert {page.locator("#compare-a").input_value(), page.locator("#compare-b").input_value()} == {"shapes", "shapes-again"}
    for frame_id in ("#frame-a", "#frame-b"):
        frame = page.locator(frame_id).element_handle().content_frame()
        frame.wait_for_load_state()
        page.wait_for_function(f"document.querySelector('{frame_id}').contentDocument.title.includes('deepfit evaluation')")
    page.select_option("#compare-b", "shapes")
    assert page.locator("#frame-b").get_attribute("src") == "/runs/shapes/report.html"


def test_screenshot_of_a_prediction(page: Any, server: Server, tmp_path: Path) -> None:
    open_page(page, server.url)
    photo = tmp_path / "triangle.png"
    shape_image(2, 3, size=160).save(photo)
    page.check("#explain")
    predict_file(page, photo)
    page.wait_for_selector("#explanation-box:not([hidden])")
    assert page.locator("#explanation").get_attribute("src").startswith("data:image/png;base64,")
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    width, height = Image.open(shot).size
    assert width >= 1000 and height >= 500
    assert np.asarray(Image.open(shot).convert("L")).std() > 5  # not a blank page
    if os.environ.get("DEEPFIT_SCREENSHOT"):
        DOCS_PICTURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_PICTURE)


def test_token_travels_from_the_page_url(browser: Any, runs_folder: Path, trained_run: TrainedRun) -> None:
    """With --token the page opened as /?token=T loads its own files, sends the header and links the reports."""
    import httpx

    from deepfit.serve.app import create_app

    with Server(create_app([runs_folder / "shapes"], runs_folder=runs_folder, token=TOKEN)) as server:
        assert httpx.get(server.url + "/v1/models").status_code == 401
        context = browser.new_context()
        context.set_default_timeout(20_000)
        try:
            tab = context.new_page()
            sent: list[str | None] = []
            tab.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
            open_page(tab, f"{server.url}/?token={TOKEN}")
            assert tab.evaluate("getComputedStyle(document.body).margin") == "0px"  # the stylesheet loaded
            path = sorted(trained_run.data.glob("ring/*.png"))[0]
            assert predict_file(tab, path) in {"2", "10", "ring"}
            assert sent and all(h == f"Bearer {TOKEN}" for h in sent)
            tab.click("#tab-runs")
            link = tab.locator('#runs-table tr[data-run="shapes"] a.report-link')
            assert link.get_attribute("href") == f"/runs/shapes/report.html?token={TOKEN}"
            with tab.expect_popup() as popup_info:
                link.click()
            report = popup_info.value
            report.wait_for_load_state()
            assert "deepfit evaluation" in report.title()
        finally:
            context.close()


# --- other modalities, against answers the test gives in the server's place ---------------------------


def fake_model(page: Any, model: dict[str, Any], answer: dict[str, Any]) -> list[Any]:
    """The page sees only `model`, and every prediction gets `answer`; returns the requests sent to predict."""
    sent: list[Any] = []
    page.route("**/v1/models", lambda route: route.fulfill(json={"models": [model]}))

    def predict(route: Any) -> None:
        sent.append(route.request)
        route.fulfill(json=answer)

    page.route(f"**/v1/models/{model['name']}/predict*", predict)
    return sent


def test_microphone_records_a_second_and_posts_wav(page: Any, server: Server) -> None:
    import soundfile

    model = {"name": "birds", "task": "classify", "modality": "sound", "classes": ["crow", "owl"],
             "input": "a sound file", "explains": False}
    answer = {"model": "birds", "task": "classify", "result": {"label": "owl", "probability": 0.75,
                                                                "top": [["owl", 0.75], ["crow", 0.25]]}}
    sent = fake_model(page, model, answer)
    open_page(page, server.url)
    assert page.locator("#webcam").is_hidden() and not page.locator("#microphone").is_hidden()
    assert page.locator("#file").get_attribute("accept").startswith("audio/")
    page.click("#microphone")  # Chromium's fake microphone: a beep
    page.wait_for_function("Number(document.getElementById('count').textContent) >= 1")
    assert page.locator("#label").inner_text() == "owl" and page.locator("#bars .bar").count() == 2
    assert len(sent) == 1 and sent[0].headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(sent[0].post_data_buffer), dtype="float32")
    assert samples.ndim == 1 and rate >= 8000 and 0.5 < len(samples) / rate < 1.6
    assert np.abs(samples).max() > 0.01  # the beep, not silence
    assert page.locator("#picture").is_hidden() and not page.locator("#audio").is_hidden()


def test_text_model_posts_json_and_shows_token_scores(page: Any, server: Server) -> None:
    model = {"name": "reviews", "task": "classify", "modality": "text", "classes": ["bad", "good"],
             "input": 'JSON {"text": "..."}', "explains": True}
    answer = {"model": "reviews", "task": "classify", "result": {"label": "good", "probability": 0.9,
                                                                  "top": [["good", 0.9], ["bad", 0.1]]},
              "tokens": [["a", 0.01], ["lovely", 0.8], ["film", -0.2]]}
    sent = fake_model(page, model, answer)
    open_page(page, server.url)
    assert page.locator("#drop").is_hidden() and page.locator("#webcam").is_hidden()
    page.check("#explain")
    page.fill("#text", "a lovely film")
    page.click("#send")
    page.wait_for_selector("#tokens .token")
    assert json.loads(sent[0].post_data) == {"text": "a lovely film"}
    assert sent[0].url.endswith("/v1/models/reviews/predict?explain=1")
    assert page.locator("#label").inner_text() == "good"
    assert page.locator("#tokens .token").all_inner_texts() == ["a", "lovely", "film"]


def test_detections_are_listed(page: Any, server: Server, tmp_path: Path) -> None:
    model = {"name": "squares", "task": "detect", "modality": "image", "classes": ["red", "blue"],
             "input": "an image file", "explains": False}
    answer = {"model": "squares", "task": "detect", "picture": "data:image/png;base64,iVBORw0KGgo=",
              "result": {"objects": 2, "detections": [{"class": "red", "score": 0.91, "box": [1.2, 2, 30.7, 40]},
                                                      {"class": "blue", "score": 0.5, "box": [50, 5, 60, 20]}]}}
    fake_model(page, model, answer)
    open_page(page, server.url)
    assert page.locator("#explain").is_disabled()
    photo = tmp_path / "squares.png"
    shape_image(0, 0, size=64).save(photo)
    assert predict_file(page, photo) == "2 objects"
    assert page.locator("#detections li").all_inner_texts() == ["red 91.0 % [1, 2, 31, 40]", "blue 50.0 % [50, 5, 60, 20]"]
