"""One typed configuration: YAML file, then ``SENTINEL_*`` environment, then flags.

Each part of sentinel declares its own section as a dataclass (``AgentConfig`` in
``sentinel/agent/config.py``, and so on) and loads it with :func:`load_section`.
Every field may carry ``metadata={"help": ..., "choices": (...), "min": x, "max": y}``.
A bad key or value raises :class:`ConfigError` naming the key, the value and what is
valid; the CLI turns that into exit code 2.

Precedence, lowest first: dataclass defaults, the YAML file's section, environment
variables ``SENTINEL_<SECTION>_<KEY>`` (upper case), then explicit overrides (flags).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "SENTINEL_"


class ConfigError(ValueError):
    """A configuration key or value is not valid; the message says what would be."""


def load_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Parse a YAML file; a file that cannot be read or parsed is a ConfigError naming it."""
    import yaml  # here, not at import: burn-in's API runs where PyYAML may be absent

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{what} {p}: cannot read it ({e.strerror or e})") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p}: not valid YAML: {e}") from e


def read_yaml_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a mapping of sections, with clear errors."""
    p = Path(path)
    data = load_yaml(p)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p}: top level must be a mapping of sections "
            f"(agent:, notify:, ...), got {type(data).__name__}"
        )
    return data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any, from_text: bool) -> Any:
    """Convert ``value`` to ``tp`` or raise ConfigError naming key, value and valid type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (from_text and value in ("", "null", "none")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a, from_text)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (str,)
        if from_text and isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ConfigError(
                f"{key}: {value!r} is not a list (valid: a list of {_type_name(inner)})"
            )
        return [_coerce(f"{key}[{i}]", v, inner, from_text) for i, v in enumerate(items)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        raise ConfigError(f"{key}: {value!r} is not a boolean (valid: true/false, yes/no, 1/0)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a number")
        num: float | None = None
        if isinstance(value, int | float):
            num = float(value)
        elif isinstance(value, str):
            try:
                num = float(value.strip())
            except ValueError:
                pass
        if num is None:
            raise ConfigError(f"{key}: {value!r} is not a number")
        # NaN passes every min/max check and inf overflows timeouts: neither is a setting.
        if not math.isfinite(num):
            raise ConfigError(f"{key}: {value!r} is not a finite number (valid: e.g. 5.0)")
        return num
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: {value!r} is not a string")
    if tp is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise ConfigError(f"{key}: {value!r} is not a path")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # a programming error


def _check_field(
    key: str, value: Any, meta: Mapping[str, Any], error: type[ValueError] = ConfigError
) -> None:
    choices = meta.get("choices")
    if choices is not None and value is not None:
        vals = value if isinstance(value, list) else [value]
        for v in vals:
            if v not in choices:
                raise error(f"{key}: {v!r} is not valid (valid: {', '.join(map(str, choices))})")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value != value:  # NaN passes both comparisons below
            raise error(f"{key}: {value!r} is not a number")
        if lo is not None and value < lo:
            raise error(f"{key}: {value!r} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise error(f"{key}: {value!r} is above the maximum {hi}")


def check_fields(obj: Any, section: str, error: type[ValueError] = ConfigError) -> None:
    """Check every field of dataclass ``obj`` against its metadata's choices and range.

    For objects built in code (a Python API) rather than through :func:`load_section`,
    which runs the same checks on what it loads.
    """
    for f in dataclasses.fields(obj):
        _check_field(f"{section}.{f.name}", getattr(obj, f.name), f.metadata, error)


def load_section(
    cls: type[T],
    section: str,
    *,
    file_data: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build the dataclass ``cls`` for config section ``section``.

    ``file_data`` is the whole parsed YAML file (all sections), ``env`` the process
    environment (``os.environ`` when None), ``overrides`` values from flags (keys are
    field names; a value of None means "not given").
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}

    sec = (file_data or {}).get(section, {})
    if sec is None:
        sec = {}
    if not isinstance(sec, Mapping):
        raise ConfigError(f"{section}: must be a mapping of keys, got {type(sec).__name__}")
    for k, v in sec.items():
        k2 = str(k).replace("-", "_")
        if k2 not in fields:
            raise ConfigError(
                f"{section}.{k}: unknown key (valid keys: {', '.join(sorted(fields))})"
            )
        values[k2] = _coerce(f"{section}.{k}", v, hints[k2], from_text=False)

    env = os.environ if env is None else env
    prefix = f"{ENV_PREFIX}{section.upper()}_"
    for name, v in env.items():
        if not name.startswith(prefix):
            continue
        k2 = name[len(prefix) :].lower()
        if k2 not in fields:
            raise ConfigError(
                f"environment {name}: unknown key {section}.{k2} "
                f"(valid keys: {', '.join(sorted(fields))})"
            )
        values[k2] = _coerce(f"{name} ({section}.{k2})", v, hints[k2], from_text=True)

    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in fields:
            raise ConfigError(
                f"{section}.{k}: unknown key (valid keys: {', '.join(sorted(fields))})"
            )
        values[k] = _coerce(f"{section}.{k}", v, hints[k], from_text=isinstance(v, str))

    for k, v in values.items():
        _check_field(f"{section}.{k}", v, fields[k].metadata)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()  # cross-field checks; raises ConfigError
    return obj


def split_hostport(key: str, value: str) -> tuple[str, int]:
    """Return (host, port) of ``HOST:PORT`` (``[::1]:9464`` too); ConfigError names ``key``.

    An empty host means every address.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT (valid: e.g. 127.0.0.1:9464)")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - documented default


def describe(cls: type[Any], section: str) -> str:
    """Document a section's keys: name, type, default, help (for --help and docs)."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        lines.append(
            f"{section}.{f.name} ({_type_name(hints[f.name])}, default {default!r}): "
            f"{f.metadata.get('help', '')}"
        )
    return "\n".join(lines)
