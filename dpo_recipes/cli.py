"""What every command shares at its front door: the argument parser whose errors are one line (argparse would print
a usage of many options and exit 2 with its own wording), and the YAML reader for configs and launcher files.

Only the standard library and yaml: `make train` runs `smoke check-device` through this module before every launch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .errors import UserError


class OneLineErrors:
    """Mixin for an argparse parser (argparse's own, or TRL's): a bad argument raises UserError, which
    `exit_on_user_error` prints as one line with exit code 2."""

    def error(self, message):
        raise UserError(f"command line: {message}")


class CommandParser(OneLineErrors, argparse.ArgumentParser):
    """The parser of every `python -m dpo_recipes.<command>`."""


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping (a recipe config, a variant, an accelerate config; an empty file is {}), or one line saying what
    is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())  # safe loader: no Python objects from YAML
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of key: value, got {type(data).__name__}")
    return data
