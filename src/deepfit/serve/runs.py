"""The runs page's data: the run folders under one folder, each with its task, data, headline figure and date, and
their reports, served without ever reading outside that folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def headline(run: Path) -> str:
    """The run's main figure in words: its last test evaluation's (accuracy, box mAP, mIoU), else its best
    checkpoint's validation figure, else ""."""
    log = run / "evaluations.jsonl"
    if log.is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        try:
            last = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            last = {}
        for key, words in (("accuracy", "accuracy"), ("miou", "mIoU")):
            if isinstance(last.get(key), int | float):
                return f"{last.get('split', 'test')} {words} {last[key]:.4f}"
        if isinstance(last.get("box"), dict) and isinstance(last["box"].get("map"), int | float):
            return f"{last.get('split', 'test')} box mAP {last['box']['map']:.4f}"
    best = run / "best.json"
    if best.is_file():
        try:
            meta = json.loads(best.read_text())
        except json.JSONDecodeError:
            return ""
        for key, value in meta.items():
            if key.startswith("val_") and isinstance(value, int | float):
                return f"validation {key[4:]} {value:.4f}"
    return ""


def list_runs(folder: Path) -> list[dict[str, Any]]:
    """The run folders directly under `folder` (those with a config.json), newest first."""
    runs = []
    for run in sorted(p for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []:
        try:
            config = json.loads((run / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        mtime = (run / "config.json").stat().st_mtime
        runs.append({"name": run.name, "task": config.get("task", ""), "model": config.get("model", ""),
                     "data": str(config.get("data", "")), "metric": headline(run),
                     "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime)), "time": mtime,
                     "report": f"/runs/{run.name}/report.html" if (run / "report.html").is_file() else None})
    return sorted(runs, key=lambda r: -r["time"])


def inside(folder: Path, *parts: str) -> Path | None:
    """folder/parts... when it is a file inside `folder` (no `..`, no link leading out), else None."""
    root = folder.resolve()
    path = root.joinpath(*parts).resolve()
    return path if path.is_file() and path.is_relative_to(root) else None
