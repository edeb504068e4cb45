"""Read JSON data back into typed values and dataclasses, naming the key of any error.

Burn-in reports travel as JSON (``sentinel burnin --json`` on one node, read by the
controller on another), so reading one back checks every key and type against the
dataclasses' annotations: a missing or unknown key, a wrong type or an unknown enum
value raises :class:`FormatError` with the key's path (``report.gpus[3].verdict``) and
what would be valid. Non-finite floats arrive spelled ``"NaN"``/``"Infinity"``/
``"-Infinity"`` (:mod:`sentinel.jsonnum`) and are read back as floats.
Standard library only, like the rest of the burn-in API.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sentinel.jsonnum import NONFINITE, decode

T = TypeVar("T")

_REQUIRED = object()


class FormatError(ValueError):
    """JSON data does not have the shape it should; the message names the key."""


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _read_scalar(tp: Any, v: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise FormatError(f"{where}: {v!r} is not true or false")
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise FormatError(f"{where}: {v!r} is not an integer ({_type_name(v)})")
    if tp is float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str) and v in NONFINITE:
            return NONFINITE[v]
        raise FormatError(f"{where}: {v!r} is not a number ({_type_name(v)})")
    if tp is str:
        if isinstance(v, str):
            return v
        raise FormatError(f"{where}: {v!r} is not a string ({_type_name(v)})")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        valid = [str(m.value) for m in tp]
        if isinstance(v, str) and v in valid:
            return tp(v)
        raise FormatError(f"{where}: {v!r} is not a valid {tp.__name__} (valid: "
                          f"{', '.join(valid)})")
    raise TypeError(f"{where}: cannot read type {tp!r}")  # a programming error


def read_value(tp: Any, v: Any, where: str) -> Any:
    """Return ``v`` checked (and converted where JSON differs) as type ``tp``."""
    if tp is Any:
        return decode(v)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if v is None and len(args) < len(typing.get_args(tp)):
            return None
        (inner,) = args  # only "X | None" is used in records
        return read_value(inner, v, where)
    if origin in (list, Sequence):
        (inner,) = typing.get_args(tp)
        if not isinstance(v, list):
            raise FormatError(f"{where}: expected a list, got {_type_name(v)}")
        return [read_value(inner, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin in (dict, Mapping):
        _, inner = typing.get_args(tp)
        obj = expect_object(v, where)
        return {k: read_value(inner, x, f"{where}.{k}") for k, x in obj.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return read_dataclass(tp, v, where)
    return _read_scalar(tp, v, where)


def expect_object(v: Any, where: str) -> Mapping[str, Any]:
    """Return ``v`` if it is a JSON object, else raise FormatError naming ``where``."""
    if not isinstance(v, Mapping):
        raise FormatError(f"{where}: expected an object, got {_type_name(v)}")
    return v


class Fields:
    """Typed access to the keys of one JSON object; :meth:`done` rejects keys not read."""

    def __init__(self, data: Any, where: str) -> None:
        self.data = expect_object(data, where)
        self.where = where
        self._read: set[str] = set()

    def get(self, key: str, tp: Any, default: Any = _REQUIRED) -> Any:
        """Return the value of ``key`` as ``tp`` (``default`` when absent, else an error)."""
        self._read.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise FormatError(f"{self.where}.{key}: missing")
            return default
        return read_value(tp, self.data[key], f"{self.where}.{key}")

    def object(self, key: str) -> Fields:
        """Return the nested object under ``key`` (required)."""
        self._read.add(key)
        if key not in self.data:
            raise FormatError(f"{self.where}.{key}: missing")
        return Fields(self.data[key], f"{self.where}.{key}")

    def done(self) -> None:
        """Raise FormatError if the object has a key nothing read (a typo, or a newer format)."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise FormatError(f"{self.where}.{unknown[0]}: unknown key (valid keys: "
                              f"{', '.join(sorted(self._read))})")


def read_dataclass(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a JSON object whose keys are its field names."""
    hints = typing.get_type_hints(cls)
    f = Fields(data, where)
    kwargs: dict[str, Any] = {}
    for fld in dataclasses.fields(cls):  # type: ignore[arg-type]  # T is a dataclass
        has_default = (fld.default is not dataclasses.MISSING
                       or fld.default_factory is not dataclasses.MISSING)
        if has_default and fld.name not in f.data:
            f.get(fld.name, hints[fld.name], None)  # mark it known; the default applies
            continue
        kwargs[fld.name] = f.get(fld.name, hints[fld.name])
    f.done()
    return cls(**kwargs)
