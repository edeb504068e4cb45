"""One typed configuration: YAML file, then ``SENTINEL_*`` environment, then flags.

Each part of sentinel declares its own section as a dataclass (``AgentConfig`` in
``sentinel/agent/config.py``, and so on) and loads it with :func:`load_section`.
Every field may carry ``metadata={"help": ..., "choices": (...), "min": x, "max": y,
"secret": True}``; a number without a ``max`` is refused above :data:`DEFAULT_MAX`, and
a secret's value is never put in a message. A bad key or value raises
:class:`ConfigError` naming the key, the value and what is valid; the CLI turns that
into exit code 2. An environment variable that is no key is a warning, not an error.

Precedence, lowest first: dataclass defaults, the YAML file's section, environment
variables ``SENTINEL_<SECTION>_<KEY>`` (upper case), then explicit overrides (flags).

The file's top-level sections are declared by the parts that read them: a part puts
``@config_section("name")`` on its dataclass (or calls :func:`register_section`), and a
section no part declares is an error naming the valid ones (:func:`known_sections`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import math
import os
import stat
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

ENV_PREFIX = "SENTINEL_"
# Environment variables in a section's namespace that are not config keys, and what
# reads them. systemd exports all of /etc/default/sentinel-agent into the agent, where
# the README tells people to put these, so they are neither errors nor warned about.
# (``SENTINEL_AGENT_SOCKET`` is both the agent's ``socket`` key and the Reporter's
# variable, with one meaning: the agent's report socket.)
REPORTER_UDP_ENV = "SENTINEL_AGENT_UDP"
REPORTER_SOCKET_ENV = "SENTINEL_AGENT_SOCKET"
ENV_NOT_KEYS: dict[str, str] = {
    "SENTINEL_AGENT_ARGS": "extra flags of the agent's systemd unit (its ExecStart line)",
    REPORTER_UDP_ENV: "the Reporter's host:port of the agent's UDP fallback",
}
# A number with no ``max`` of its own is refused above this: far above any count,
# size or duration sentinel uses, far below where time arithmetic overflows
# (``time.sleep`` and ``Event.wait`` refuse more than ~9.2e9 s).
DEFAULT_MAX = 1e9
# A config or rules file larger than this is not one (a log or a dump named by mistake).
MAX_FILE_BYTES = 4 * 1024 * 1024


class ConfigError(ValueError):
    """A configuration key or value is not valid; the message says what would be."""


# -- sections -------------------------------------------------------------------------
# Section name -> the module that declared it.
_SECTIONS: dict[str, str] = {}
_discovered = False


def register_section(name: str, owner: str = "") -> None:
    """Declare the top-level section ``name`` of the config file (one call per section)."""
    _SECTIONS.setdefault(name, owner)


def config_section(name: str) -> Callable[[type[T]], type[T]]:
    """Return a class decorator declaring ``name`` as the section the class is loaded from."""

    def mark(cls: type[T]) -> type[T]:
        register_section(name, cls.__module__)
        return cls

    return mark


def known_sections() -> list[str]:
    """Return every declared section, after importing each part of the CLI once.

    The parts are the modules in ``sentinel.cli.COMMANDS``: importing one declares the
    sections it reads, so a file shared by all parts is checked against all of them.
    """
    global _discovered
    if not _discovered:
        from sentinel.cli import COMMANDS  # here: the CLI imports this module

        for _name, module in COMMANDS:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name != module:  # only a part not built yet is passed over
                    raise
        _discovered = True
    return sorted(_SECTIONS)


def check_sections(data: Mapping[Any, Any], where: str) -> None:
    """Raise ConfigError for a top-level key of ``data`` that no part declared."""
    valid = known_sections()
    for key in data:
        if key not in _SECTIONS:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown section {str(key)!r}{hint} (valid sections: "
                              f"{', '.join(valid)})")


# -- files ----------------------------------------------------------------------------
def file_kind(mode: int) -> str:
    """Name what a non-regular file is (for messages)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(
    path: str,
    what: str,
    *,
    max_bytes: int,
    valid: str,
    error: type[Exception] = ConfigError,
    check: Callable[[os.stat_result], None] | None = None,
) -> bytes:
    """Return the bytes of a small regular file; anything else raises ``error``.

    A FIFO, a device or a directory is refused before it is opened (opening a FIFO
    blocks; reading /dev/zero never ends); the open is non-blocking in case the path
    changes after the look. ``check`` sees the opened file's stat (e.g. its mode).
    Messages name ``what``, the path and ``valid``, never the content.
    """

    def kind_ok(st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what}: {path} is {file_kind(st.st_mode)}; {valid}")

    try:
        kind_ok(os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise error(f"{what}: cannot read {path} ({e.strerror or e}); {valid}") from None
    try:
        st = os.fstat(fd)
        kind_ok(st)
        if check is not None:
            check(st)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise error(f"{what}: cannot read {path} ({e.strerror or e}); {valid}") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise error(f"{what}: {path} is larger than {max_bytes} bytes; {valid}")
    return b"".join(chunks)


class DuplicateKeyError(ValueError):
    """A YAML mapping gives one key twice (YAML would keep the last silently)."""


def _strict_loader() -> Any:
    """Return a PyYAML SafeLoader that refuses a key given twice in one mapping."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges defaults that explicit keys may override
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # an unhashable key: PyYAML's own error follows
            if first != key_node.start_mark.line:
                raise DuplicateKeyError(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first on "
                    f"line {first + 1}; valid: each key once)")
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def load_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Parse a YAML file; a file that cannot be read or parsed is a ConfigError naming it.

    Refused with a clear message: anything but a regular file (a FIFO would hang), more
    than MAX_FILE_BYTES, text that is not UTF-8, and a key given twice in one mapping
    (YAML would keep the last one silently).
    """
    import yaml  # here, not at import: burn-in's API runs where PyYAML may be absent

    p = os.fspath(path)
    valid = "valid: a YAML file (a regular file of UTF-8 text)"
    data = read_regular_file(p, what, max_bytes=MAX_FILE_BYTES, valid=valid)
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        text, bad = None, f"{what} {p}: not UTF-8 text (line {line}, byte {e.start}); {valid}"
    if text is None:
        raise ConfigError(bad)  # outside the handler: no traceback quoting the bytes
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as e:
        raise ConfigError(f"{what} {p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p}: not valid YAML: {e}") from e


def read_yaml_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a mapping of sections, with clear errors.

    Every top-level key must be a section some part declares (:func:`known_sections`).
    """
    p = Path(path)
    data = load_yaml(p)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p}: top level must be a mapping of sections "
            f"(agent:, notify:, ...), got {type(data).__name__}"
        )
    check_sections(data, f"config file {p}")
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
    lo, hi = meta.get("min"), meta.get("max", DEFAULT_MAX)
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

    def coerce(key: str, name: str, v: Any, from_text: bool) -> Any:
        try:
            return _coerce(key, v, hints[name], from_text)
        except ConfigError:
            if not fields[name].metadata.get("secret"):
                raise
            err = f"{key}: not a valid {_type_name(hints[name])} (a secret: its value is not shown)"
        raise ConfigError(err)  # outside the handler: the first message held the value

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
        values[k2] = coerce(f"{section}.{k}", k2, v, from_text=False)

    env = os.environ if env is None else env
    prefix = f"{ENV_PREFIX}{section.upper()}_"
    for name, v in env.items():
        if not name.startswith(prefix):
            continue
        k2 = name[len(prefix) :].lower()
        if k2 not in fields:
            _unknown_env(name, prefix, section, fields)
            continue
        values[k2] = coerce(f"{name} ({section}.{k2})", k2, v, from_text=True)

    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in fields:
            raise ConfigError(
                f"{section}.{k}: unknown key (valid keys: {', '.join(sorted(fields))})"
            )
        values[k] = coerce(f"{section}.{k}", k, v, from_text=isinstance(v, str))

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


def _unknown_env(name: str, prefix: str, section: str, fields: Mapping[str, Any]) -> None:
    """Warn about a variable in a section's namespace that is no key; never an error.

    The environment is shared with other programs (systemd's EnvironmentFile, the
    Reporter's variables on the same node), so a name that is not a key may be meant
    for something else; only one close to a real key is likely a typo, and says so.
    """
    if name in ENV_NOT_KEYS:
        return
    key = name[len(prefix):].lower()
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.75)
    hint = f"did you mean {prefix}{close[0].upper()}? " if close else ""
    log.warning("environment %s is not a setting of %s: ignored (%svalid: %s)", name,
                section, hint, ", ".join(f"{prefix}{k.upper()}" for k in sorted(fields)))


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
