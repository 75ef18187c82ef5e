"""Configs are dataclasses that are also the CLI and the YAML schema (TRL-style).

Precedence: dataclass defaults < YAML file (``--config``) < command-line flags.
YAML holds plain values only; objects are built in Python from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config file or value; the message names the file/key and the fix."""


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / X | None down to X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    if value is None:
        return None
    base = _base_type(tp)
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if base in (int, float, str):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            if base is int and isinstance(value, bool):
                raise ValueError(f"not an integer: {value!r}")
            return base(value)
        if origin in (list, tuple):
            (inner,) = typing.get_args(base)[:1] or (str,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()] if value.strip() else []
            return [_coerce(v, inner, where) for v in value]
        if origin is dict or base is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value) or {}
            if not isinstance(value, dict):
                raise ValueError(f"expected a mapping, got {value!r}")
            args = typing.get_args(base)
            vt = args[1] if len(args) == 2 else Any
            return {str(k): (v if vt is Any else _coerce(v, vt, where)) for k, v in value.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e} (expected {getattr(base, '__name__', base)})") from None
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build a config dataclass from plain values, rejecting unknown keys and bad types."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown}; valid keys are {sorted(types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{source}: key '{k}'") for k, v in values.items()}
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing YAML file to --config)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of key: value")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Every dataclass field becomes ``--field-name VALUE`` (defaults stay in the dataclass)."""
    parser.add_argument("--config", default=None, help="YAML file of plain values (keys = flags below)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                            help=f"{help_} (default: {default!r})".strip())


def parse_config(cls: type[T], args: argparse.Namespace) -> T:
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
        source = f"{args.config} + command line"
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return from_dict(cls, values, source)


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """Python entry point: YAML file (optional) plus keyword overrides."""
    values = load_yaml(path) if path else {}
    values.update(overrides)
    return from_dict(cls, values, str(path or "config"))
