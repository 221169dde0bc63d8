"""Reading YAML safely: ``yaml.safe_load`` semantics plus what a strict loader needs.

- duplicate keys are an error (PyYAML silently keeps the last one);
- ``1e6`` is a number (YAML 1.1 would read it as a string);
- files over :data:`MAX_FILE_BYTES`, alias-heavy documents and nesting deeper than
  :data:`~simserve.config.base.MAX_DEPTH` are refused before they expand;
- only the safe YAML tags: ``!!python/...`` and other unknown tags are errors, as are values the tags
  cannot hold (``2023-02-30``, a 5,000-digit integer).
"""
from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ScenarioError
from .base import MAX_DEPTH, fmt_key

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 1_000_000


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with duplicate-key detection, alias counting and YAML 1.2-style floats."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise ScenarioError(f"line {mark.line + 1}", f"more than {MAX_ALIASES} YAML aliases; refused")
        # checked here rather than by catching RecursionError: PyYAML's scanner slows down
        # quadratically with flow nesting ('[[[[...'), so a deep document must be stopped early
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ScenarioError(f"line {mark.line + 1}", f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

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

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ScenarioError, yaml.YAMLError):
            raise
        except Exception as exc:  # a constructor's ValueError etc.: '2023-02-30', '!!bool maybe', huge ints
            text = " ".join(str(exc).split(";")[0].split()) or type(exc).__name__
            raise ScenarioError(f"line {node.start_mark.line + 1}", f"invalid {node.tag.rsplit(':', 1)[-1]} "
                                f"value: {text}") from None

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ScenarioError(f"line {key_node.start_mark.line + 1}", "merge keys ('<<') are not supported")
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable) or isinstance(key, tuple):
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
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; it has no problem_mark
        line = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise ScenarioError(f"{where} line {line}".strip(), f"invalid YAML: character {char!r} is not allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{where} {line}".strip(), f"invalid YAML: {' '.join(problem.split())}") from None
    except RecursionError:
        raise ScenarioError(where, "YAML nested too deeply") from None


def load_file(path: Path) -> Any:
    """Read and parse one YAML file with a size limit; non-UTF-8 and unreadable files are errors."""
    where = fmt_key(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ScenarioError(where, f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown, or not be a regular file
    except OSError as exc:
        raise ScenarioError(where, f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError(where, f"file is over {MAX_FILE_BYTES} bytes, the limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(where, f"not UTF-8 text (byte {exc.start})") from None
    return loads(text, where)
