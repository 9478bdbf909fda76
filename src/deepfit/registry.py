"""One registry of tasks and modalities: how the CLI, the Python API, `deepfit.load` and the workflows find them.

A task (classify, detect, segment, ...) is a `deepfit.tasks.base.Task`; a modality (image, ...) is a
`deepfit.modalities.base.Modality`. deepfit's own are named here by module path and imported on first use,
so `deepfit --version` and `import deepfit` load no torch; a task or modality from outside deepfit is added
with `register_task(MyTask())` / `register_modality(...)` and is then used exactly as the built-in ones are.

This module imports nothing of deepfit but its errors: every layer may look a task up here by name.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from deepfit.errors import ConfigError

# name -> "module:attribute" of the task object (in the order `deepfit train --help` lists them; `deepfit data check`
# asks them in this order whether a folder holds their kind of labels, so semantic masks are tried before boxes)
BUILTIN_TASKS = {
    "classify": "deepfit.tasks.classify.task:TASK",
    "segment": "deepfit.tasks.segment.task:TASK",
    "detect": "deepfit.tasks.detect.task:DETECT",
    "segment-instances": "deepfit.tasks.detect.task:SEGMENT_INSTANCES",
}
BUILTIN_MODALITIES = {"image": "deepfit.modalities.image:IMAGE", "sound": "deepfit.modalities.sound:SOUND",
                      "text": "deepfit.modalities.text:TEXT"}

_tasks: dict[str, Any] = {}
_modalities: dict[str, Any] = {}


def _load(path: str) -> Any:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def register_task(task: Any) -> Any:
    """Make `task` (an object with the `Task` interface, its `name` unique) known to every verb; returns it."""
    if not getattr(task, "name", None):
        raise ConfigError(f"a task needs a name to be registered, got {task!r}")
    _tasks[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Forget a task registered from outside (tests clean up with it); deepfit's own stay."""
    _tasks.pop(name, None)


def task_names() -> list[str]:
    return [*BUILTIN_TASKS, *(n for n in _tasks if n not in BUILTIN_TASKS)]


def get_task(name: str) -> Any:
    """The task called `name`; an unknown name is an error that lists the known ones."""
    if name not in _tasks:
        if name not in BUILTIN_TASKS:
            close = difflib.get_close_matches(str(name), task_names(), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown task {name!r}{hint}; tasks: {', '.join(task_names())}")
        _tasks[name] = _load(BUILTIN_TASKS[name])
    return _tasks[name]


def all_tasks() -> list[Any]:
    return [get_task(n) for n in task_names()]


def register_modality(modality: Any) -> Any:
    _modalities[modality.name] = modality
    return modality


def get_modality(name: str) -> Any:
    if name not in _modalities:
        if name not in BUILTIN_MODALITIES:
            raise ConfigError(f"unknown modality {name!r}; modalities: {', '.join([*BUILTIN_MODALITIES, *_modalities])}")
        _modalities[name] = _load(BUILTIN_MODALITIES[name])
    return _modalities[name]
