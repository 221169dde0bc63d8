"""Reading YAML safely: ``yaml.safe_load`` semantics plus what a strict loader needs.

- duplicate keys are an error (PyYAML silently keeps the last one);
- ``1e6`` is a number (YAML 1.1 would read it as a string);
- files over :data:`MAX_FILE_BYTES` and alias-heavy documents are refused before they expand.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ScenarioError

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 1_000_000


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with duplicate-key detection, alias counting and YAML 1.2-style floats."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise ScenarioError(f"line {mark.line + 1}", f"more than {MAX_ALIASES} YAML aliases; refused")
        return super().compose_node(parent, index)

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def size(n) -> int:  # nodes after alias expansion, memoised so shared subtrees cost once
            key = id(n)
            if key not in sizes:
                sizes[key] = 1  # guards against recursive aliases
                if isinstance(n, yaml.SequenceNode):
                    sizes[key] = 1 + sum(size(c) for c in n.value)
                elif isinstance(n, yaml.MappingNode):
                    sizes[key] = 1 + sum(size(k) + size(v) for k, v in n.value)
            return sizes[key]

        if node is not None and size(node) > MAX_EXPANDED_NODES:
            raise ScenarioError("(top level)", f"the document expands to more than {MAX_EXPANDED_NODES:,} "
                                "values through aliases; refused")
        return node

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                raise ScenarioError(f"line {key_node.start_mark.line + 1}", "a mapping key must be a scalar")
            if key in seen:
                raise ScenarioError(f"line {key_node.start_mark.line + 1}", f"duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_mapping)


def _construct_map(loader, node):
    loader.construct_mapping(node)  # duplicate check
    return yaml.SafeLoader.construct_yaml_map(loader, node)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def loads(text: str, where: str = "") -> Any:
    """Parse YAML text. Errors become one-line :class:`ScenarioError` naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ScenarioError as exc:
        raise ScenarioError(f"{where} {exc.path}".strip(), exc.reason) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{where} {line}".strip(), f"invalid YAML: {problem}") from None
    except RecursionError:
        raise ScenarioError(where, "YAML nested too deeply") from None


def load_file(path: Path) -> Any:
    """Read and parse one YAML file with a size limit; non-UTF-8 and unreadable files are errors."""
    where = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ScenarioError(where, f"cannot read file: {exc.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise ScenarioError(where, f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(where, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ScenarioError(where, f"cannot read file: {exc.strerror}") from None
    return loads(text, where)
