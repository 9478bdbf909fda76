"""The argument parser every `deepfit` command uses: argparse that names the nearest option for a typo (or the
option an old name became), never accepts abbreviations, and reports an error in two lines, not the whole usage."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, NoReturn

from deepfit.config import ALIASES


class HintingParser(argparse.ArgumentParser):
    """argparse that suggests the nearest option for a typo, never accepts abbreviations,
    and reports errors in two lines instead of the whole usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def _all_options(self) -> list[str]:
        options = [s for a in self._actions for s in a.option_strings]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    options += [s for a in sub._actions for s in a.option_strings]
        return options

    def error(self, message: str) -> NoReturn:
        match = re.search(r"unrecognized arguments: (.*)", message)
        if match:
            known = self._all_options()
            hints = []
            for word in match.group(1).split():
                flag = word.split("=")[0]
                if flag.startswith("-"):
                    as_name = flag.lstrip("-").replace("-", "_")
                    alias = ALIASES.get(as_name)
                    close = ["--" + alias.replace("_", "-")] if alias else difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
                    hints.append(f"{flag}: did you mean {close[0]}?" if close else f"{flag}: no such option")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        # a subcommand's parser has prog "deepfit train": the hint names that command's help
        self.exit(2, f"{self.prog}: error: {message}\nsee `{self.prog} --help` for the options\n")

    def subcommand(self, args: argparse.Namespace) -> HintingParser:
        """The parser of the (sub)command that `args` chose: deepfit, deepfit train, deepfit data check, ..."""
        parser: HintingParser = self
        for dest in ("command", "data_command"):
            action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            if action is None or getattr(args, dest, None) is None:
                break
            parser = action.choices[getattr(args, dest)]
        return parser
