"""Writing files so that a reader never sees half of one, and nothing the user had is overwritten."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """deepfit's cache: $DEEPFIT_CACHE, else $XDG_CACHE_HOME/deepfit, else ~/.cache/deepfit."""
    if os.environ.get("DEEPFIT_CACHE"):
        return Path(os.environ["DEEPFIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepfit"


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) for a temporary file beside `path`, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes owner-only files, and some writers (safetensors) recreate the file themselves:
        # give the finished file the usual permissions, as the umask says
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
