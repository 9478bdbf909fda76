"""`deepfit serve`: trained runs behind an HTTP API (FastAPI on uvicorn) and a web page, written once over the task
interface: a request's input is decoded by the run's modality, predicted by `predictor.predict` in batches
(batching.py), and answered with the task's own per-frame record (`Task.frame_record`: the same JSON as a video's
per-frame file), masks as RLE, the input with the result drawn (`Task.draw_frame`) and, when asked, its explanation
(`Task.explain`).

    GET  /healthz                        {"status": "ok"}
    GET  /v1/models                      the runs served: name, task, modality, classes, input
    POST /v1/models/{name}/predict       raw file bytes, multipart field `file`, or JSON {"text": ...}; ?explain=1
    GET  /v1/runs, /runs/{name}/report.html     the runs page's list and reports (nothing outside --runs-folder)
    GET  /, /static/...                  the web page (no asset from the internet)
    GET  /openapi.json                   the API's OpenAPI schema

Safe by default: the CLI listens on 127.0.0.1; with a token every request needs `Authorization: Bearer TOKEN` (or
`?token=` for the page and its links); bodies, pixels, seconds and characters are limited; every error is JSON
`{"error": ...}` and the server stays up after it.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from deepfit.errors import ConfigError, DataError, DeepfitError
from deepfit.explain.result import ExplainSettings
from deepfit.log import logger
from deepfit.serve.batching import Batcher, Busy
from deepfit.serve.inputs import (
    Limits,
    TooLarge,
    check_text,
    decode_image,
    decode_sound,
    masks_record,
    png_uri,
)
from deepfit.serve.runs import inside, list_runs
from deepfit.tasks.base import Task

STATIC = Path(__file__).parent / "static"
RETRY_AFTER_S = 1


@dataclass
class Served:
    """One run behind the API: its task and predictor, the batcher that feeds it, and a lock, since a prediction and
    an explanation (grad-cam hooks the same modules) must not run through the network at once."""

    name: str
    run: Path
    task: Any
    predictor: Any
    modality: str
    batcher: Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task.name, "modality": self.modality, "classes": list(self.predictor.trained.classes),
                "input": {"image": "an image file (any format Pillow reads)", "sound": "a sound file (WAV, FLAC, OGG, MP3)",
                          "text": 'JSON {"text": "..."}'}[self.modality],
                "explains": type(self.task).explain is not Task.explain}

    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        """The answers for a batch of decoded inputs (runs in the batcher's thread)."""
        with self.lock:
            results = self.predictor.predict(items)
            out = []
            for item, result in zip(items, results, strict=True):
                record: dict[str, Any] = {"result": self.task.frame_record(self.predictor, result)}
                record["result"] |= masks_record(result, list(self.predictor.trained.classes))
                if self.modality == "image":
                    record["picture"] = png_uri(self.task.draw_frame(self.predictor, item, result))
                out.append(record)
        return out

    def explain(self, item: Any) -> dict[str, Any]:
        with self.lock:
            made = self.task.explain(self.predictor, [item], ExplainSettings(max_objects=1))
        if not made:
            return {}
        first = made[0]
        out: dict[str, Any] = {"explanation": png_uri(first.picture), "explained": {"target": first.target,
                                                                                   "method": first.method, "layer": first.layer}}
        return out | ({"tokens": [[t, round(s, 5)] for t, s in first.tokens]} if first.tokens is not None else {})


def serve_runs(runs: list[str | Path], backend: str = "torch", device: str = "auto", *, batch: bool = True,
               max_batch: int = 16, max_queue: int = 64) -> dict[str, Served]:
    """The runs loaded for serving, by a unique name (the run folder's name)."""
    from deepfit.runs.folder import run_folder
    from deepfit.workflows.predict import load_predictor

    served: dict[str, Served] = {}
    for run in runs:
        task, predictor = load_predictor(run, device=device, backend=backend)
        folder = run_folder(run)
        name, n = folder.name, 1
        while name in served:
            n += 1
            name = f"{folder.name}-{n}"
        one = Served(name, folder, task, predictor, getattr(predictor, "modality", task.modality))
        one.batcher = Batcher(one.predict, max_batch=max_batch if batch else 1, max_queue=max_queue)
        served[name] = one
    return served


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request's body, refused as soon as it passes the byte limit (a declared length is checked first)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        limits.check_bytes(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        limits.check_bytes(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_request(request: Request, served: Served, limits: Limits) -> Any:
    """The input a request carries, decoded by the run's modality from its content."""
    body = await read_body(request, limits)
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form()
        field = form.get("file") if "file" in form else form.get("text")
        if field is None:
            raise DataError("a multipart upload needs a field named `file` (or `text` for a text model)")
        body = await field.read() if hasattr(field, "read") else str(field).encode()
        if served.modality == "text":
            return check_text(body.decode("utf-8", errors="replace"), limits)
    if served.modality == "text":
        try:
            text = json.loads(body.decode("utf-8")).get("text") if kind.startswith("application/json") else body.decode("utf-8")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise DataError('send a JSON object {"text": "..."} (UTF-8)') from None
        return check_text(text, limits)
    if not body:
        raise DataError("the request has no body: send the file's bytes (or multipart with a `file` field)")
    decode = decode_image if served.modality == "image" else decode_sound
    return await run_in_threadpool(decode, body, limits)


def create_app(runs: list[str | Path], *, backend: str = "torch", token: str | None = None, runs_folder: str | Path | None = None,
               limits: Limits | None = None, batch: bool = True, device: str = "auto", max_batch: int = 16,
               max_queue: int = 64) -> FastAPI:
    """The app serving `runs` (their reports and the other runs in `runs_folder`, default the first run's parent)."""
    if not runs:
        raise ConfigError("give at least one run to serve")
    limits = limits or Limits()
    served = serve_runs(runs, backend, device, batch=batch, max_batch=max_batch, max_queue=max_queue)
    folder = Path(runs_folder) if runs_folder else next(iter(served.values())).run.parent
    # the interactive docs pages load their scripts from a CDN, which the page must not: the schema is at /openapi.json
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for s in served.values():  # the batchers' threads end with the server
            if s.batcher is not None:
                s.batcher.close()

    app = FastAPI(title="deepfit", docs_url=None, redoc_url=None, version="1", lifespan=lifespan)
    app.state.served, app.state.limits = served, limits

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.query_params.get("token", "")
            if not secrets.compare_digest(given.encode(), token.encode()):
                return error(401, "a valid token is needed: send the header `Authorization: Bearer TOKEN`")
        try:
            return await call_next(request)
        except Exception as e:  # noqa: BLE001 - the server stays up; the client gets JSON
            logger.exception(f"error answering {request.method} {request.url.path}")
            return error(500, f"internal error: {type(e).__name__}: {e}")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(DeepfitError)
    async def user_error(_request: Request, e: DeepfitError) -> JSONResponse:
        return error(413 if isinstance(e, TooLarge) else 400, str(e))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": [s.describe() for s in served.values()]}

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request, explain: bool = False) -> Any:
        one = served.get(name)
        if one is None:
            return error(404, f"no model named {name!r}; served: {', '.join(served)}")
        item = await decode_request(request, one, limits)
        assert one.batcher is not None
        try:
            answer = await one.batcher.submit(item)
        except Busy:
            return error(503, "the server is busy: retry in a moment", {"Retry-After": str(RETRY_AFTER_S)})
        answer = {"model": name, "task": one.task.name, **answer}
        if explain:
            try:
                answer |= await run_in_threadpool(one.explain, item)
            except DeepfitError as e:  # a model that cannot be explained still answers its prediction
                answer["explanation_error"] = str(e)
        return answer

    @app.get("/v1/runs")
    async def runs_list() -> dict[str, Any]:
        return {"folder": str(folder), "runs": list_runs(folder)}

    @app.get("/runs/{name}/report.html")
    async def report(name: str) -> Any:
        path = inside(folder, name, "report.html")
        return FileResponse(path) if path else error(404, f"no report of a run named {name!r} in the runs folder")

    @app.get("/")
    async def page() -> Any:
        index = STATIC / "index.html"
        return FileResponse(index) if index.is_file() else error(404, "the web page is not installed")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app
