"""The `deepfit serve` command: trained runs behind an HTTP API and a web page (serve/app.py) on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from deepfit.errors import ConfigError
from deepfit.log import logger


def add_serve_command(sub: Any) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="serve runs over HTTP: a JSON API (batched predictions) and a web page")
    s.add_argument("runs", nargs="+", help="run folders (each served by its folder's name)")
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--backend", default="torch", help="torch (default), onnx or int8 (the runs' exported files)")
    s.add_argument("--token", help="require `Authorization: Bearer TOKEN` on every request (the page: open /?token=TOKEN)")
    s.add_argument("--runs-folder", help="the folder the runs page lists (default: the first run's parent)")
    s.add_argument("--max-bytes", type=int, default=20_000_000, help="largest request body (default 20 MB)")
    s.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default 40 M)")
    s.add_argument("--max-seconds", type=float, default=600.0, help="longest sound (default 600 s)")
    s.add_argument("--max-characters", type=int, default=100_000, help="longest text (default 100,000)")
    s.add_argument("--max-batch", type=int, default=16, help="requests predicted together at most (default 16)")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting at most; more are answered 503 (default 64)")
    s.add_argument("--no-batching", action="store_true", help="predict each request alone")
    s.add_argument("--device", default="auto")
    return s


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from deepfit.serve.app import create_app
    from deepfit.serve.inputs import Limits

    for name in ("max_bytes", "max_pixels", "max_characters", "max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_seconds <= 0:
        raise ConfigError("--max-seconds must be above 0")
    if not _loopback(args.host) and not args.token:
        logger.warning(f"listening on {args.host} without --token: anyone who can reach this machine can use the models")
    app = create_app(args.runs, backend=args.backend, token=args.token, runs_folder=args.runs_folder, device=args.device,
                     limits=Limits(args.max_bytes, args.max_pixels, args.max_seconds, args.max_characters),
                     batch=not args.no_batching, max_batch=args.max_batch, max_queue=args.max_queue)
    logger.info(f"serving {', '.join(app.state.served)} at http://{args.host}:{args.port}/ (API: /v1/models, schema: "
                "/openapi.json); Ctrl-C stops")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
