"""Configs are dataclasses that are also the CLI and the YAML schema (TRL-style).

Precedence: dataclass defaults < YAML file (``--config``) < command-line flags.
YAML holds plain values only; objects are built in Python from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
POSITIONAL = "positional:"      # argparse dest prefix of a field given as positional arguments


class ConfigError(ValueError):
    """A bad config file or value; the message names the file/key and the fix."""


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / X | None down to X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    if value is None or (_optional(tp) and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return None
    base = _base_type(tp)
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in TRUE_WORDS:
                return True
            if s in FALSE_WORDS:
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


def _nested_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default if f.default is not dataclasses.MISSING else _base_type(_field_types(cls)[name])()


def _merged(cls: type, base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a nested config's default, as a dict) updated by ``values``; a config nested in it is
    updated key by key too (ExperimentConfig.rsft.train keeps the rsft default's train keys it leaves out),
    any other value (a list, a mapping such as rewards) is replaced whole."""
    types_ = _field_types(cls)
    out = dict(base)
    for k, v in values.items():
        inner = _base_type(types_[k]) if k in types_ else None
        if (dataclasses.is_dataclass(inner) and isinstance(inner, type) and isinstance(v, dict)
                and isinstance(base.get(k), dict)):
            out[k] = _merged(inner, base[k], v)
        else:
            out[k] = v
    return out


def _recipe_values(cls: type, path: str | Path, source: str) -> dict[str, Any]:
    """Every key of ``cls`` as a recipe file sets it (keys it leaves out: the class's defaults), so a
    section given as a file replaces the section whole instead of merging into the outer default."""
    if not Path(path).is_file():
        raise ConfigError(f"{source}: {path} is not a file (a section takes a mapping or a YAML recipe file)")
    return dataclasses.asdict(from_dict(cls, load_yaml(path), str(path)))


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build a config dataclass from plain values, rejecting unknown keys and bad types.

    A field whose type is itself a config dataclass (e.g. ``RSFTConfig.train: TrainConfig``) takes a
    mapping of that config's keys; keys it leaves out keep the *field's* default (the outer command's
    choice), not the inner class's."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown}; valid keys are {sorted(types_)}"
        )
    kwargs = {}
    for k, v in values.items():
        inner = _base_type(types_[k])
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                kwargs[k] = v
                continue
            if isinstance(v, (str, Path)):       # a whole recipe file: its values on the class's defaults
                v = _recipe_values(inner, v, f"{source}: {k}")
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: key '{k}' takes a mapping of {inner.__name__} keys or a YAML file "
                                  f"of them, got {v!r}")
            base = dataclasses.asdict(_nested_default(cls, k))
            kwargs[k] = from_dict(inner, _merged(inner, base, v), f"{source}: {k}")
        else:
            kwargs[k] = _coerce(v, types_[k], f"{source}: key '{k}'")
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return cfg


def override(cfg: T, **values: Any) -> T:
    """A copy of ``cfg`` with ``values`` set and checked; a mapping given for a nested config updates it
    key by key (``override(rsft, accept={"min_vote": 0.0})`` keeps the other accept keys)."""
    cls = type(cfg)
    return from_dict(cls, _merged(cls, dataclasses.asdict(cfg), values), f"{cls.__name__} override")


def read_yaml(path: str | Path, error: type[Exception], missing: str) -> Any:
    """The parsed file; a missing file raises ``error(missing)``, bad syntax ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({e}); fix the syntax") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = read_yaml(path, ConfigError, f"config file not found: {path} (pass an existing YAML file to --config)") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of key: value")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


class _BoolFlag(argparse.Action):
    """A bool field's flag: ``--json`` alone is true, ``--json false`` sets it. Where the command has list
    positionals (``spill``: their dest), a word after the flag that is not a boolean (``--json clip.wav``) is
    one of them, as it was after a ``store_true`` switch."""

    def __init__(self, *args: Any, spill: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spill = spill

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if self.spill and str(values).strip().lower() not in TRUE_WORDS + FALSE_WORDS:
            setattr(namespace, self.spill, [*getattr(namespace, self.spill, []), values])
            values = "true"
        setattr(namespace, self.dest, values)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(_base_type(tp)) in (list, tuple)


def _help(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    return f"{f.metadata.get('help', '')} (default: {default!r})".strip()


def _add_positionals(parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...]) -> str | None:
    """Fields ``names`` as positional arguments (a list field takes all that are left, any other one);
    returns the dest of the list one, if any."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    types_ = _field_types(cls)
    spill = None
    for name in names:
        many = _is_list(types_[name])
        spill = spill or (POSITIONAL + name if many else None)
        parser.add_argument(POSITIONAL + name, metavar=name.upper(), nargs="*" if many else "?",
                            action="extend" if many else "store", default=argparse.SUPPRESS,
                            help=_help(by_name[name]))
    return spill


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                            positional: tuple[str, ...] = ()) -> None:
    """Every dataclass field becomes ``--field-name VALUE`` (defaults stay in the dataclass); the fields of a
    nested config become ``--outer.inner-name VALUE`` (e.g. ``--train.lr 3e-4``). A bool flag alone means
    true (``--json`` = ``--json true``), a list flag alone the empty list. The fields named in ``positional``
    are also taken from positional arguments (``assistant transcribe-and-classify a.wav b.wav``)."""
    if not prefix:
        parser.add_argument("--config", default=None, help="YAML file of plain values (keys = flags below)")
    spill = _add_positionals(parser, cls, positional)
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        inner = _base_type(types_[f.name])
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            parser.add_argument("--" + prefix + f.name.replace("_", "-"), dest=prefix + f.name,
                                default=argparse.SUPPRESS, metavar="YAML",
                                help=f"a {inner.__name__} recipe file for the whole section (its dotted "
                                     "flags below apply on top)")
            add_dataclass_arguments(parser, inner, prefix=f"{prefix}{f.name}.")
            continue
        kwargs: dict[str, Any] = {}
        if inner is bool:
            kwargs = {"nargs": "?", "const": "true", "action": _BoolFlag, "spill": spill}
        elif _is_list(inner):
            kwargs = {"nargs": "?", "const": ""}
        parser.add_argument("--" + prefix + f.name.replace("_", "-"), dest=prefix + f.name,
                            default=argparse.SUPPRESS, metavar=f.name.upper(), help=_help(f), **kwargs)


def _section_type(cls: type, dotted: str) -> type | None:
    """The config class of the nested section a dotted name points at (None for a plain field)."""
    for name in dotted.split("."):
        types_ = _field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if name not in types_:
            return None
        cls = _base_type(types_[name])
    return cls if dataclasses.is_dataclass(cls) and isinstance(cls, type) else None


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *outer, last = dotted.split(".")
    for key in outer:
        values = values.setdefault(key, {})
        if not isinstance(values, dict):
            raise ConfigError(f"--{dotted}: '{key}' is not a nested config")
    values[last] = value


def parse_config(cls: type[T], args: argparse.Namespace) -> T:
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
        source = f"{args.config} + command line"
    names = {f.name for f in dataclasses.fields(cls)}
    given = vars(args)
    # a section's recipe file first (as its full values), then dotted flags inside it
    for key in sorted((k for k in given if k.split(".")[0] in names and k != "config"), key=lambda k: k.count(".")):
        value = given[key]
        section = _section_type(cls, key)
        if section is not None and isinstance(value, str):
            value = _recipe_values(section, value, f"--{key}")
        _set_dotted(values, key, value)
    for key, value in given.items():
        if key.startswith(POSITIONAL):
            name = key[len(POSITIONAL):]
            if name in given:
                raise ConfigError(f"{name}: give it as positional argument(s) or as --{name.replace('_', '-')}, "
                                  "not both")
            values[name] = value
    return from_dict(cls, values, source)


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """Python entry point: YAML file (optional) plus keyword overrides."""
    values = load_yaml(path) if path else {}
    types_ = _field_types(cls)
    for key, value in overrides.items():
        nested = key in types_ and dataclasses.is_dataclass(_base_type(types_[key]))
        if nested and isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}          # a nested config: override key by key
        else:
            values[key] = value
    return from_dict(cls, values, str(path or "config"))


def parse_command(cls: type[T], prog: str, doc: str | None, argv: list[str], positional: tuple[str, ...] = ()) -> T:
    """A command's config from its argv: every field a flag (``add_dataclass_arguments``), ``--config YAML``,
    checked values. Commands never reach for the Hugging Face hub unless the user asks (HF_HUB_OFFLINE=0):
    every default weight ships in a pip package."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(ap, cls, positional=positional)
    cfg = parse_config(cls, ap.parse_args(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return cfg


def json_command(cls: type[T], prog: str, doc: str | None, argv: list[str], work: Callable[[T], Any],
                 errors: tuple[type[BaseException], ...], positional: tuple[str, ...] = ()) -> int:
    """A report command: its config from argv (``parse_command``), ``work(cfg)`` printed as indented JSON,
    expected errors as one line (``run_command``)."""
    return run_command(prog, lambda: print(json.dumps(work(parse_command(cls, prog, doc, argv, positional)),
                                                      indent=1)), errors)


def run_command(prog: str, work: Callable[[], Any], errors: tuple[type[BaseException], ...]) -> int:
    """Run a command's work; an expected error (bad input, named with its fix) is one line on stderr and
    exit code 2, not a traceback."""
    try:
        work()
    except errors as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0
