"""One mechanism for checking configuration values by type and range.

Every config dataclass (models, training) declares each field with `spec(default, ge=..., ...)`;
`validate_fields` checks every field against its annotation (strictly: no bool for an int, no
'8' for an int, no 16.5 for an int, no NaN or infinity for a float) and against the declared
bounds or choices. Hand-written per-model `validate` methods only add cross-field rules, so a
field cannot be forgotten. `coerce` turns text (``--set model.hidden=64``, JSON, TOML) into the
annotated type before validation; command-line options use `int_arg` / `float_arg`, which apply
the same bounds with argparse's one-line errors.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable

_META = "argen"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Range or choices of one value; `None` means unbounded on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    finite: bool = True  # floats must be finite (NaN and infinities are never a setting)

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        parts = []
        if self.ge is not None:
            parts.append(f">= {self.ge}")
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.le is not None:
            parts.append(f"<= {self.le}")
        if self.lt is not None:
            parts.append(f"< {self.lt}")
        return " and ".join(parts) or "any value"

    def ok(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, float) and self.finite and not math.isfinite(value):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        return not ((self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt)
                    or (self.le is not None and not value <= self.le) or (self.lt is not None and not value < self.lt))


def spec(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, choices: typing.Iterable[Any] | None = None,
         min_len: int = 0, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with declared bounds; for tuples the bounds apply to every element."""
    bounds = Bounds(ge, gt, le, lt, tuple(choices) if choices is not None else None)
    kw: dict[str, Any] = {"metadata": {_META: (bounds, min_len)}}
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


def field_bounds(f: dataclasses.Field) -> tuple[Bounds, int] | None:
    """The (bounds, min_len) a field declared with `spec`, or None."""
    return f.metadata.get(_META)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, where: str) -> None:
    """Raise ValueError unless `value` is exactly of annotated type `tp` (no conversion)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                _check_type(value, arg, where)
                return
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, given {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            raise ValueError(f"{where}: expected a tuple, given {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            for v in value:
                _check_type(v, args[0], where)
            return
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, given {len(value)} ({value!r})")
        for v, a in zip(value, args):
            _check_type(v, a, where)
        return
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: expected one of {list(typing.get_args(tp))}, given {value!r}")
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, given {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, given {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, given {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, given {value!r}")
    elif isinstance(tp, type) and tp is not typing.Any and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {_type_name(tp)}, given {value!r}")


def _elements(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [e for v in value for e in _elements(v)]
    return [] if value is None else [value]


def restore_tuples(cfg: Any) -> None:
    """Turn list-valued fields of a dataclass config back into tuples, so a config read from JSON
    (a checkpoint) equals the one written. No other conversion: a wrong type is for `validate_fields`
    to report, never silently fixed."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, list):
            object.__setattr__(cfg, f.name, tuple(value))


def validate_fields(cfg: Any, section: str) -> None:
    """Check every field of dataclass `cfg` by its annotation and declared bounds.

    Floats given as ints are normalised to float in place (JSON writes 1.0 as 1). Fields without
    `spec` metadata are type-checked only; `undeclared_fields` lists them so tests can insist.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        where = f"{section}.{f.name}"
        value = getattr(cfg, f.name)
        if isinstance(value, list):  # JSON round trips turn tuples into lists
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            setattr(cfg, f.name, value)
        tp = hints[f.name]
        _check_type(value, tp, where)
        if tp is float and isinstance(value, int):
            setattr(cfg, f.name, float(value))
        meta = field_bounds(f)
        if meta is None:
            continue
        bounds, min_len = meta
        if isinstance(value, tuple) and len(value) < min_len:
            raise ValueError(f"{where}: expected at least {min_len} values, given {value!r}")
        for v in _elements(value):
            if isinstance(v, bool) and bounds.choices is None:
                continue
            if not bounds.ok(v):
                raise ValueError(f"{where}: expected {bounds.describe()}, given {v!r}")


def undeclared_fields(cls: type) -> list[str]:
    """Fields of dataclass `cls` with a numeric or string type but no declared bounds (a test lists them)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if field_bounds(f) is None and _base_type(hints[f.name]) in (int, float, str):
            out.append(f.name)
    return out


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else tp
    if origin is tuple:
        return _base_type(typing.get_args(tp)[0])
    return tp


def bad_values(cls: type, name: str) -> list[Any]:
    """Values that field `name` of config `cls` must reject: wrong types and just-out-of-range values."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp = typing.get_type_hints(cls)[name]
    base = _base_type(tp)
    tuple_tp = next((t for t in (tp, *typing.get_args(tp)) if typing.get_origin(t) is tuple), None)
    # a bad element inside a tuple of an acceptable length (fixed: its length; variable: min_len or 1)
    fixed = tuple_tp is not None and Ellipsis not in typing.get_args(tuple_tp)
    length = len(typing.get_args(tuple_tp)) if fixed else max(1, _min_len(f))
    wrap = (lambda v: (v,) * length) if tuple_tp is not None else (lambda v: v)
    out: list[Any] = [object()]
    if tuple_tp is not None and (fixed or _min_len(f) > 0):
        out.append(wrap(0)[:-1])  # one value too few (fixed length, or below min_len)
    if base in (int, float):
        out += [wrap("8"), wrap(True)]
        out += [wrap(float("nan")), wrap(float("inf"))]
        if base is int:
            out.append(wrap(2.5))
    elif base is str:
        out += [wrap(3)]
    elif base is bool:
        out += [wrap("yes"), wrap(1)]
    meta = field_bounds(f)
    if meta is not None:
        b = meta[0]
        if b.choices is not None:
            out.append(wrap("bogus" if base is str else object()))
        step = 1 if base is int else 1e-6
        if b.ge is not None:
            out.append(wrap(type_cast(base, b.ge - step)))
        if b.gt is not None:
            out.append(wrap(type_cast(base, b.gt)))
        if b.le is not None:
            out.append(wrap(type_cast(base, b.le + step)))
        if b.lt is not None:
            out.append(wrap(type_cast(base, b.lt)))
    return out


def _min_len(f: dataclasses.Field) -> int:
    meta = field_bounds(f)
    return meta[1] if meta else 1


def type_cast(base: Any, v: float) -> Any:
    return int(math.floor(v)) if base is int and v == math.floor(v) else (base(v) if base is int else float(v))


# ----- text to typed values ----------------------------------------------------------------------
def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert plain data `value` (JSON, TOML, `--set` text) to the annotated type `tp`.

    Strings are accepted for numbers and booleans because `--set` values arrive as text; the
    result is still checked by `validate_fields`.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: expected {_type_name(tp)}, given {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",")
                     if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, given {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, given {len(value)} ({value!r})")
        return tuple(coerce(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"{where}: expected true or false, given {value!r}")
    if tp is int or tp is float:
        word = "an integer" if tp is int else "a number"
        if not isinstance(value, bool):
            if isinstance(value, int) or (tp is float and isinstance(value, float)):
                return tp(value)
            if tp is int and isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return tp(value.strip())
                except ValueError:
                    pass
        raise ValueError(f"{where}: expected {word}, given {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, given {value!r}")
    return value  # an annotation this helper does not know: pass through, validation checks it


def coerce_fields(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    """Coerce a dict of field values to dataclass `cls`'s field types; unknown keys are an error."""
    if not isinstance(values, dict):
        raise ValueError(f"expected a table of {section} settings, given {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {unknown}; expected some of {sorted(known)}")
    return {k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}


# ----- command-line options ---------------------------------------------------------------------
def _arg(kind: Callable[[str], Any], name: str, bounds: Bounds) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'} {bounds.describe()}, given {text!r}") from None
        if not bounds.ok(value):
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"expected {what} {bounds.describe()}, given {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def int_arg(*, ge: int | None = None, gt: int | None = None, le: int | None = None) -> Callable[[str], int]:
    """argparse `type=` for a bounded integer option: bad values are usage errors (exit 2) at parse time."""
    return _arg(int, "int", Bounds(ge=ge, gt=gt, le=le))


def float_arg(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
              lt: float | None = None) -> Callable[[str], float]:
    """argparse `type=` for a bounded finite number (NaN and infinities are refused)."""
    return _arg(float, "float", Bounds(ge=ge, gt=gt, le=le, lt=lt))
