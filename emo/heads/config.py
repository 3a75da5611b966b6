"""Head configs from strings: strict keys and type coercion, so command-line options and JSON presets
fill a config dataclass and a typo fails loudly (STYLE: configuration is dataclasses)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

__all__ = ["config_from_dict", "config_to_dict"]

# -- configs ----------------------------------------------------------------------------------------
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with strict keys and type coercion.

    An unknown key raises ``ValueError`` naming it and the valid ones. Values are coerced to the
    field's annotated type, so strings from the command line work: ``"0.5"`` -> 0.5, ``"true"`` -> True,
    ``"0.1,1,10"`` or ``"[0.1, 1, 10]"`` -> ``[0.1, 1.0, 10.0]``, ``"none"`` -> None for optional fields.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no field {unknown[0]!r}; valid fields: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cls.__name__}.{key}: cannot read {value!r} as {_type_name(hints[key])} ({e})") from None
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-able dict (the inverse of :func:`config_from_dict`)."""
    return dataclasses.asdict(config)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        if isinstance(value, str) and value not in args:
            for a in args:  # "3" for Literal[3]
                if str(a) == value:
                    return a
        if value not in args:
            raise ValueError(f"expected one of {', '.join(map(repr, args))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError("a bool is not an int")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError("a bool is not a float")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [v.strip() for v in text.split(",")] if text else []
        if not isinstance(value, list | tuple):
            raise TypeError("expected a list")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ValueError(f"expected {len(args)} values")
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise TypeError("expected a mapping")
        return dict(value)
    return value


