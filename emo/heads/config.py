"""Head configs from strings: strict keys and type coercion, so command-line options and JSON presets
fill a config dataclass and a typo fails loudly, with a "did you mean" (STYLE: configuration is
dataclasses). :func:`field_help` documents every field from the config's own source: its type, default,
choices and the comment written beside it (no second copy of the text to fall out of date). Not pydantic: command-line strings need these rules
anyway, and the help comes from the comments (docs/dependencies.md)."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from typing import Any

__all__ = ["FieldHelp", "config_from_dict", "config_to_dict", "field_help", "format_field_help"]

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
        close = difflib.get_close_matches(unknown[0], list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{cls.__name__} has no field {unknown[0]!r}{hint}; valid fields: {', '.join(fields)}")
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




# -- help -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FieldHelp:
    """One config field as its command-line option: ``--name``, type, default, choices, meaning."""

    name: str
    type: str
    default: Any
    choices: tuple = ()
    meaning: str = ""

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _comments(cls: type) -> dict[str, str]:
    """field -> the ``# comment`` on its line in the class body (or the docstring-less line above)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a class made at run time)
        return {}
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    body = ast.parse(source).body[0]
    out = {}
    for node in getattr(body, "body", []):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = by_line.get(node.end_lineno) or by_line.get(node.lineno) or ""
            out[node.target.id] = text.removeprefix("noqa").strip()
    return out


def _type_label(tp: Any) -> tuple[str, tuple]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "choice", tuple(args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        label, choices = _type_label(inner[0]) if len(inner) == 1 else (" | ".join(_type_name(a) for a in inner), ())
        return (f"{label} | none" if type(None) in args else label), choices
    if origin in (list, tuple):
        item = _type_name(args[0]) if args else "value"
        return f"{item},{item},...", ()
    return _type_name(tp), ()


def field_help(cls: type) -> list[FieldHelp]:
    """Every init field of config dataclass ``cls``, in declaration order, documented from its source
    (a subclass's comment wins over its base's for a field both declare)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            comments.update({k: v for k, v in _comments(klass).items() if v or k not in comments})
    hints = typing.get_type_hints(cls)
    defaults = cls() if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                            for f in dataclasses.fields(cls) if f.init) else None
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        label, choices = _type_label(hints[f.name])
        default = getattr(defaults, f.name) if defaults is not None else None
        out.append(FieldHelp(f.name, label, default, choices, comments.get(f.name, "")))
    return out


def format_field_help(cls: type) -> str:
    """The fields of ``cls`` as an option list: ``--name TYPE [choices] (default D)  meaning``."""
    lines = []
    for h in field_help(cls):
        kind = "|".join(map(str, h.choices)) if h.choices else h.type.upper() if h.type != "bool" else "true|false"
        default = json.dumps(h.default, ensure_ascii=False) if not isinstance(h.default, str) else h.default or '""'
        lines.append(f"  {h.option} {kind}  (default {default})" + (f"\n      {h.meaning}" if h.meaning else ""))
    return "\n".join(lines)
