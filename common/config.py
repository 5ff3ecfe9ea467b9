"""Run configuration: code defaults ← YAML file ← command-line flags ← ``--set a.b=value``.

The defaults dict is the schema: a key it does not have, or a value of another type, is an error that names the
key and lists the valid ones. The effective config is saved into the run directory so a run can be reproduced.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from common.errors import UserError


PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(UserError, ValueError):
    pass


def project_path(value: str | Path | None) -> Path | None:
    """A path from a config: ``~`` expanded, relative paths taken from the project root (None stays None)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def existing_path(value: str | None) -> str | None:
    """A file path from a config or flag: as given when it exists (from the working directory), else from the
    project root when it exists there (the configs' convention, so commands work from any folder), else as given,
    for the caller's "not found" message. None and "" stay as they are."""
    if not value or Path(value).expanduser().exists():
        return value
    from_root = project_path(value)
    return str(from_root) if from_root.exists() else value


def required_path(value: str | None, what: str, hint: str) -> str | None:
    """``existing_path`` of a file that must exist (None and "" stay as they are): else ``FileNotFoundError``
    naming ``what``, both places looked in, and ``hint`` (what to do)."""
    resolved = existing_path(value)
    if resolved and not Path(resolved).exists():
        raise FileNotFoundError(f"{what} not found: {value} (also looked in {project_path(value)}). {hint}")
    return resolved


def _check_type(key: str, default: Any, value: Any, source: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{source}: {key} must be {type(default).__name__} (like {default!r}), "
                          f"got {type(value).__name__} {value!r}")
    return value


def _unknown_key(key: str, valid: Iterable[str], source: str) -> ConfigError:
    valid = sorted(valid)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}.{hint} Valid keys here: {', '.join(valid)}")


def merge(defaults: Mapping, updates: Mapping, source: str, prefix: str = "") -> dict:
    """A copy of ``defaults`` with ``updates`` applied, checking every key and type."""
    merged = copy.deepcopy(dict(defaults))
    if not isinstance(updates, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, "
                          f"got {type(updates).__name__}")
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in merged:
            raise _unknown_key(dotted, merged.keys(), source)
        if isinstance(merged[key], dict):
            merged[key] = merge(merged[key], value, source, dotted + ".")
        else:
            merged[key] = _check_type(dotted, merged[key], value, source)
    return merged


def set_dotted(config: dict, dotted: str, value: Any, source: str) -> None:
    """Set ``a.b.c`` in place, with the same key and type checks as the YAML file."""
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown_key(".".join(parts[: i + 1]), node.keys() if isinstance(node, dict) else [], source)
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                node[part] = merge(node[part], value, source, dotted + ".")
            else:
                node[part] = _check_type(dotted, node[part], value, source)
        else:
            node = node[part]


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def build_config(defaults: Mapping, yaml_path: str | Path | None = None,
                 flag_overrides: Mapping[str, Any] | None = None, set_items: Iterable[str] = ()) -> dict:
    """Effective config. ``flag_overrides`` maps dotted keys to values of flags the user gave (None = not given);
    ``set_items`` are ``key=value`` strings whose value is parsed as YAML (``train.lr=3e-4``, ``data.val=null``)."""
    config = copy.deepcopy(dict(defaults))
    if yaml_path is not None:
        config = merge(config, load_yaml(yaml_path), str(yaml_path))
    for dotted, value in (flag_overrides or {}).items():
        if value is not None:
            set_dotted(config, dotted, value, "command line")
    for item in set_items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_dotted(config, dotted.strip(), value, "--set")
    return config


def save_config(config: Mapping, run_dir: str | Path, name: str = "config.yaml") -> Path:
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path
