"""Frozen, strictly validated config data and the one dotted-path grammar used everywhere.

Every config class derives from :class:`Frozen`. Validation failures from pydantic are turned into a
single :class:`ScenarioError` whose message starts with the dotted path of the offending key
(``scheduler.max_num_seqs: must be >= 1, got 0``). The same path grammar (dot-separated keys, integer
segments index lists) is accepted by :func:`set_path` for ``--set path=value`` overrides.
"""
from __future__ import annotations

import difflib
import reprlib
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ScenarioError


class Frozen(BaseModel):
    """Base of all config data: immutable, unknown keys rejected, no type coercion, no NaN/inf."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, validate_default=True
    )


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 60


def fmt_value(value: Any) -> str:
    """A short one-line repr, safe for any input (deep, recursive, or a 10,000-digit integer)."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer too long to print (Python's int_max_str_digits)
        text = f"an integer of {value.bit_length():,} bits" if isinstance(value, int) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def fmt_key(key: Any) -> str:
    """A mapping key or path segment as shown in a message: as written, or repr'd if it holds
    whitespace other than spaces or unprintable characters (so a message stays on one line)."""
    text = str(key)
    return text if text.replace(" ", "x").isprintable() else repr(text)


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


def display_path(loc: tuple, data: Any, kind: str | None = None) -> str:
    """Dotted path of ``loc`` as the user wrote it: union tags and class names that pydantic inserts
    into locations are dropped by walking the user's own data. ``kind`` is the pydantic error type; only
    for a missing key does the path name something absent from the data."""
    return ".".join(_walk_loc(loc, data, kind)[0])


def _walk_loc(loc: tuple, data: Any, kind: str | None) -> tuple[list[str], bool]:
    """(path segments, whether the location ends in a pydantic label such as a union member's type)."""
    parts: list[str] = []
    current = data
    label = False
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        label = False
        if isinstance(current, dict) and part in current:
            parts.append(fmt_key(part))
            current = current[part]
        elif isinstance(current, (list, tuple)) and isinstance(part, int) and 0 <= part < len(current):
            parts.append(str(part))
            current = current[part]
        elif isinstance(current, dict) and any(current.get(k) == part for k in _TAG_KEYS):
            continue  # pydantic names the chosen variant of a tagged union by its tag
        elif last and kind in (None, "missing"):
            parts.append(fmt_key(part))
        else:
            label = True  # a union member ('str', 'dict[str,any]'), '[key]' or a validator name; skip it
    return parts, label


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
        text = f"unknown key '{key}'" if fmt_key(key) == key else f"unknown key {fmt_key(key)}"
        if hint:
            text += f" (did you mean '{hint[0]}'?)"
        return text + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "invalid_key" or (err["loc"] and err["loc"][-1] == "[key]"):
        return f"a key must be a string, got {fmt_value(value)}"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {fmt_value(value)}"
    bounds = {
        "greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"), "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {op} {bound}, got {fmt_value(value)}"
    if kind == "finite_number":
        return f"must be a finite number, got {fmt_value(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {fmt_value(value)}"
    if kind == "union_tag_invalid":
        return f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} {fmt_value(ctx.get('tag'))}; known: {ctx.get('expected_tags')}"
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
    check_tree(data, prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda e: _error_order(e, data))
        err = errors[0]
        path = display_path(tuple(err["loc"]), data, err["type"])
        reason = _message(err, model, ())
        if _is_union_mismatch(err, data):
            # "str | dict" wrong on every side: name every accepted type, not just the first one tried
            words = [_TYPE_WORDS[e["type"]] for e in errors if _is_union_mismatch(e, data)
                     and display_path(tuple(e["loc"]), data, e["type"]) == path]
            reason = f"must be {' or '.join(dict.fromkeys(words))}, got {fmt_value(err.get('input'))}"
        full = ".".join(p for p in (".".join(fmt_key(p) for p in prefix), path) if p)
        raise ScenarioError(full or "(top level)", reason) from None


def _is_union_mismatch(err: dict, data: Any) -> bool:
    """A type error of one member of a union (``model: 5`` is neither a string nor a mapping)."""
    loc = tuple(err["loc"])
    return err["type"] in _TYPE_WORDS and loc[-1:] != ("[key]",) and _walk_loc(loc, data, err["type"])[1]


def _error_order(err: dict, data: Any) -> tuple:
    # report unknown keys before the consequences of a misspelt key (a 'missing' elsewhere), and a
    # union member's deeper error (a bad key inside an inline model) before "wrong type" on every side
    rank = {"extra_forbidden": 0, "union_tag_invalid": 0}.get(err["type"], 1)
    return (rank, _is_union_mismatch(err, data), len(err["loc"]))


MAX_DEPTH = 100
INT_RANGE = (-(2**63), 2**63 - 1)


def check_tree(data: Any, prefix: tuple = (), ints: bool = True) -> None:
    """Refuse what would crash code after validation rather than fail it: nesting deeper than
    :data:`MAX_DEPTH` (or data that contains itself, through a recursive YAML alias) and, with ``ints``,
    integers outside 64 bits (numpy and float arithmetic downstream cannot hold them)."""
    deepest: dict[int, int] = {}  # id of a container -> deepest level it was checked at
    stack: list[tuple[Any, tuple]] = [(data, tuple(prefix))]
    while stack:
        node, path = stack.pop()
        depth = len(path) - len(prefix)
        if ints and isinstance(node, int) and not isinstance(node, bool) and not INT_RANGE[0] <= node <= INT_RANGE[1]:
            raise ScenarioError(_join(path), f"must be an integer that fits in 64 bits, got {fmt_value(node)}")
        if not isinstance(node, (dict, list, tuple, set, frozenset)):
            continue
        if depth >= MAX_DEPTH:
            raise ScenarioError(_join(path[: len(prefix) + 1]), f"nested more than {MAX_DEPTH} levels deep")
        if deepest.get(id(node), -1) >= depth:
            continue  # a shared subtree (YAML alias) already checked at this depth or deeper
        deepest[id(node)] = depth
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((value, path + (key,)) for key, value in items)


def _join(path: tuple) -> str:
    return ".".join(fmt_key(p) for p in path) or "(top level)"


def parse_path(path: str) -> list[str | int]:
    """Split a dotted path; integer segments index lists. ``a.0.b`` -> ``['a', 0, 'b']``."""
    if not path or any(not seg for seg in path.split(".")):
        raise ScenarioError(fmt_key(path) if path else "(empty)", "not a dotted path like 'scheduler.max_num_seqs'")
    return [int(seg) if seg.isascii() and seg.isdigit() else seg for seg in path.split(".")]


def set_path(data: dict, path: str, value: Any) -> dict:
    """Return a copy of ``data`` with ``path`` set to ``value``, creating mappings as needed.

    An integer segment indexes a list, and is a (string) key in a mapping."""
    import copy

    parts, raw = parse_path(path), path.split(".")
    check_tree(data, ints=False)  # deepcopy recurses
    out = copy.deepcopy(data) if data is not None else {}
    if not isinstance(out, dict):
        raise ScenarioError("(top level)", "must be a mapping")
    node: Any = out
    for i, part in enumerate(parts):
        here = ".".join(fmt_key(p) for p in parts[: i + 1])
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ScenarioError(here, f"no list item {fmt_key(part)}")
        else:
            part = raw[i]
        if i == len(parts) - 1:
            node[part] = value
            break
        nxt = node[part] if isinstance(node, list) else node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, (dict, list)):
            raise ScenarioError(here, f"is {fmt_value(nxt)}, not a mapping; cannot set '{fmt_key(path)}'")
        node = nxt
    return out


def load_validated(model: type[BaseModel], path, what: str) -> Any:
    """Read one YAML file that must be a mapping and validate it; errors name the file, then the key."""
    from .yamlio import load_file

    data = load_file(path)
    if not isinstance(data, dict):
        raise ScenarioError(str(path), f"{what} must be a mapping")
    try:
        return validate(model, data)
    except ScenarioError as exc:
        raise ScenarioError(f"{path} {exc.path}", exc.reason) from None
