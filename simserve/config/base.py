"""Frozen, strictly validated config data and the one dotted-path grammar used everywhere.

Every config class derives from :class:`Frozen`. Validation failures from pydantic are turned into a
single :class:`ScenarioError` whose message starts with the dotted path of the offending key
(``scheduler.max_num_seqs: must be >= 1, got 0``). The same path grammar (dot-separated keys, integer
segments index lists) is accepted by :func:`set_path` for ``--set path=value`` overrides.
"""
from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ScenarioError


class Frozen(BaseModel):
    """Base of all config data: immutable, unknown keys rejected, no type coercion, no NaN/inf."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, validate_default=True
    )


def _fmt_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(model_type: Any) -> list[str]:
    if isinstance(model_type, type) and issubclass(model_type, BaseModel):
        return list(model_type.model_fields)
    return []


def _walk_types(root: type, loc: tuple) -> Any:
    """Follow a pydantic error location through the model types; return the type at ``loc``."""
    current: Any = root
    for part in loc:
        current = _strip_annotated(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if isinstance(part, str) and part in current.model_fields:
                current = current.model_fields[part].annotation
                continue
            return None
        origin = typing.get_origin(current)
        args = typing.get_args(current)
        if origin in (list, tuple) and args:
            current = args[0]
        elif origin is dict and len(args) == 2:
            current = args[1]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            # a tagged union: the location names the variant by its tag (or its class name)
            match = None
            for arg in args:
                arg = _strip_annotated(arg)
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    tag = _tag_of(arg)
                    if part in (tag, arg.__name__):
                        match = arg
            current = match
        else:
            return None
    return _strip_annotated(current)


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _tag_of(model: type[BaseModel]) -> str | None:
    for key in _TAG_KEYS:
        field = model.model_fields.get(key)
        if field is not None:
            args = typing.get_args(field.annotation)
            if args and isinstance(args[0], str):
                return args[0]
    return None


_TAG_KEYS = ("policy", "kind", "process", "dist", "format")


def display_path(loc: tuple, data: Any) -> str:
    """Dotted path of ``loc`` as the user wrote it: union tags and class names that pydantic inserts
    into locations are dropped by walking the user's own data."""
    parts: list[str] = []
    current = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, dict) and part in current:
            parts.append(str(part))
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            parts.append(str(part))
            current = current[part]
        elif isinstance(current, dict) and any(current.get(k) == part for k in _TAG_KEYS):
            continue  # pydantic names the chosen variant of a tagged union by its tag
        elif last and isinstance(part, (str, int)) and not str(part).startswith("function-"):
            parts.append(str(part))
        # otherwise: a tag or validator name that pydantic put in the location; skip it
    return ".".join(parts)


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "float_type": "a number",
    "float_parsing": "a number", "bool_type": "true or false", "string_type": "a string",
    "dict_type": "a mapping", "list_type": "a list", "tuple_type": "a list", "model_type": "a mapping",
    "dataclass_type": "a mapping", "model_attributes_type": "a mapping", "int_from_float": "an integer",
}


def _message(err: dict, root: type, prefix: tuple) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(_walk_types(root, prefix + tuple(err["loc"][:-1])))
        key = str(err["loc"][-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        text = f"unknown key '{key}'"
        if hint:
            text += f" (did you mean '{hint[0]}'?)"
        return text + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {_fmt_value(value)}"
    bounds = {
        "greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"), "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {op} {bound}, got {_fmt_value(value)}"
    if kind == "finite_number":
        return f"must be a finite number, got {_fmt_value(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {_fmt_value(value)}"
    if kind == "union_tag_invalid":
        return f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} {_fmt_value(ctx.get('tag'))}; known: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"a '{ctx.get('discriminator', 'kind').strip(chr(39))}' key is required"
    if kind in ("too_short", "too_long"):
        return err["msg"].lower()
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"][0].lower() + err["msg"][1:]


def validate(model: type[BaseModel], data: Any, prefix: tuple = ()) -> Any:
    """Validate ``data`` into ``model``; raise :class:`ScenarioError` naming the first bad path.

    ``prefix`` is the location of ``data`` inside the user's file, so nested loads (a hardware profile
    referenced from a scenario, an inline model) report full paths.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=_error_order)
        err = errors[0]
        path = display_path(tuple(err["loc"]), data)
        full = ".".join(p for p in (".".join(map(str, prefix)), path) if p)
        raise ScenarioError(full or "(top level)", _message(err, model, ())) from None


def _error_order(err: dict) -> tuple:
    # report unknown keys before the consequences of a misspelt key (a 'missing' elsewhere)
    rank = {"extra_forbidden": 0, "union_tag_invalid": 0}.get(err["type"], 1)
    return (rank, len(err["loc"]))


def parse_path(path: str) -> list[str | int]:
    """Split a dotted path; integer segments index lists. ``a.0.b`` -> ``['a', 0, 'b']``."""
    if not path or any(not seg for seg in path.split(".")):
        raise ScenarioError(path or "(empty)", "not a dotted path like 'scheduler.max_num_seqs'")
    return [int(seg) if seg.isdigit() else seg for seg in path.split(".")]


def set_path(data: dict, path: str, value: Any) -> dict:
    """Return a copy of ``data`` with ``path`` set to ``value``, creating mappings as needed."""
    import copy

    parts = parse_path(path)
    out = copy.deepcopy(data) if data is not None else {}
    if not isinstance(out, dict):
        raise ScenarioError("(top level)", "must be a mapping")
    node: Any = out
    for i, part in enumerate(parts[:-1]):
        here = ".".join(map(str, parts[: i + 1]))
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ScenarioError(here, f"no list item {part}")
            node = node[part]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, (dict, list)):
            raise ScenarioError(here, f"is {_fmt_value(nxt)}, not a mapping; cannot set '{path}'")
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ScenarioError(path, f"no list item {last}")
    node[last] = value
    return out
