"""Labels and groups taken from file names by a regular expression with named groups (`--label-pattern`).

Sound collections often keep everything in one folder and put the label and the speaker in the name: the Free
Spoken Digit Dataset's `7_jackson_32.wav` is digit 7, said by jackson, take 32, which
`--label-pattern '(?P<label>\\d)_(?P<group>[a-z]+)_\\d+\\.wav'` reads (image sets do it too: Oxford pets'
`Abyssinian_12.jpg`). `label` is required; `group` (the speaker, the source recording) keeps the files of one group in
one split; `split` names a split (train, val or test); `fold` a cross-validation fold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deepfit.errors import ConfigError
from deepfit.log import logger

KNOWN_FIELDS = ("label", "group", "split", "fold")


@dataclass(frozen=True)
class NamedFile:
    path: Path
    label: str
    group: str | None = None
    split: str | None = None
    fold: str | None = None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern, checked: valid, with a `label` group and no named group deepfit would not use."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"--label-pattern {pattern!r} is not a valid regular expression: {e}") from None
    names = set(compiled.groupindex)
    if "label" not in names:
        raise ConfigError(f"--label-pattern {pattern!r} has no (?P<label>...) group: name the part of the file name "
                          "that is the label, e.g. '(?P<label>\\d)_(?P<group>[a-z]+)_\\d+\\.wav'")
    unknown = sorted(names - set(KNOWN_FIELDS))
    if unknown:
        raise ConfigError(f"--label-pattern names groups deepfit does not use: {', '.join(unknown)}; use "
                          f"{', '.join(KNOWN_FIELDS)}")
    return compiled


def label_files(paths: Sequence[Path], pattern: str, root: Path) -> list[NamedFile]:
    """Each file whose name (or, failing that, path below `root`) matches the whole pattern, with its fields. Files
    that do not match are left out with one warning that counts them and names the first."""
    compiled = compile_pattern(pattern)
    out, missed = [], []
    for path in paths:
        found = compiled.fullmatch(path.name)
        if found is None:
            try:
                found = compiled.fullmatch(path.relative_to(root).as_posix())
            except ValueError:
                found = None
        if found is None or not found.group("label"):
            missed.append(path)
            continue
        fields = {k: v for k, v in found.groupdict().items() if v}
        out.append(NamedFile(path, **fields))
    if missed:
        logger.warning(f"{len(missed)} of {len(paths)} files do not match --label-pattern {pattern!r} and are left out, "
                       f"e.g. {missed[0]}")
    if not out:
        raise ConfigError(f"no file name matches --label-pattern {pattern!r} (e.g. {paths[0].name if paths else 'none'}); "
                          "the pattern must match the whole name, extension included")
    return out
