"""Flags from the environment and from a YAML file, the way operators configure services.

For a subcommand's flag `--max-sessions`, a value given on the command line wins; then the environment
variable `BANDITSPEC_MAX_SESSIONS`; then `max-sessions:` (or `max_sessions:`) in the file named by
`--config`; then the flag's default. A repeatable flag takes a whitespace-separated list from the
environment and a YAML list from the file; an on/off flag takes 1/0, true/false, yes/no or on/off.
The file may also hold one section per subcommand (`serve-target: {...}`), so several services can share it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "BANDITSPEC_"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_name(option: str) -> str:
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"YAML file of flag values (the command line, then {ENV_PREFIX}* win)"
    )


def apply(parser: argparse.ArgumentParser, argv: list[str], environ: Mapping[str, str]) -> None:
    """Set the invoked subcommand's defaults from `--config` and the environment, before parsing `argv`."""
    command = _subcommand(parser, argv)
    if command is None:
        return
    name, sub = command
    flags = _flags(sub)
    values: dict[str, Any] = {}
    config = _config_path(argv)
    if config is not None:
        for key, raw in _read_config(config, name).items():
            action = flags.get(key.replace("_", "-"))
            if action is None:
                known = ", ".join(sorted(flags))
                parser.error(f"{config}: {name} has no flag --{key} (known: {known})")
            values[action.dest] = _convert(action, raw, f"{config}: {key}", parser)
    for option, action in flags.items():
        variable = env_name(option)
        if variable in environ:
            values[action.dest] = _convert(action, environ[variable], variable, parser)
    for action in sub._actions:
        if action.dest in values:
            action.required = False  # a required flag may come from the environment or the file
    sub.set_defaults(**values)


def _subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and argv and argv[0] in action.choices:
            return argv[0], action.choices[argv[0]]
    return None


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long options (without the dashes) that take a value or switch something; not --help, --config."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == "config":
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                out[option[2:]] = action
    return out


def _config_path(argv: list[str]) -> Path | None:
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def _read_config(path: Path, command: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"error: cannot read --config {path}: {error}") from error
    if not isinstance(document, dict):
        raise SystemExit(f"error: --config {path}: expected a mapping of flag names to values")
    section = document.get(command)
    if isinstance(section, dict):  # one section per subcommand
        return section
    return {key: value for key, value in document.items() if not isinstance(value, dict)}


def _convert(action: argparse.Action, raw: Any, source: str, parser: argparse.ArgumentParser) -> Any:
    try:
        if action.nargs == 0:  # an on/off flag (store_true / store_false / store_const)
            text = str(raw).strip().lower()
            if text not in TRUE | FALSE:
                raise ValueError(f"expected one of {', '.join(sorted(TRUE | FALSE))}")
            on = text in TRUE
            return action.const if on else action.default
        if isinstance(action, argparse._AppendAction):
            items = raw if isinstance(raw, list) else str(raw).split()
            return [_one(action, item) for item in items]
        return _one(action, raw)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        parser.error(f"{source}: invalid value {raw!r} for --{action.option_strings[-1].lstrip('-')}: {error}")


def _one(action: argparse.Action, raw: Any) -> Any:
    if isinstance(raw, dict | list):
        raise ValueError("expected a single value")
    text = str(raw).lower() if isinstance(raw, bool) else str(raw)
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"choose from {', '.join(map(str, action.choices))}")
    return value
