"""Reading YAML safely: ``yaml.safe_load`` semantics plus what a strict loader needs.

- duplicate keys are an error (PyYAML silently keeps the last one);
- ``1e6`` is a number (YAML 1.1 would read it as a string);
- files over :data:`MAX_FILE_BYTES`, alias-heavy documents and nesting deeper than
  :data:`~simserve.config.base.MAX_DEPTH` are refused before they expand;
- only the safe YAML tags: ``!!python/...`` and other unknown tags are errors, as are values the tags
  cannot hold (``2023-02-30``, a 5,000-digit integer).
"""
from __future__ import annotations

import copy
import functools
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ScenarioError
from .base import MAX_DEPTH, fmt_key, fmt_value

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
        # checked here rather than by catching RecursionError, which would first have to be reached
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ScenarioError(f"line {mark.line + 1}", f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, TokenClass):
        # the scanner's cost grows with the square of flow nesting ('[[[[...'): stop it before the composer would
        if self.flow_level >= MAX_DEPTH:
            raise ScenarioError(f"line {self.get_mark().line + 1}", f"nested more than {MAX_DEPTH} levels deep")
        super().fetch_flow_collection_start(TokenClass)

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
            tag = node.tag.rsplit(":", 1)[-1]
            value = fmt_value(node.value) if isinstance(node, yaml.ScalarNode) else "value"
            why = " ".join(str(exc).split(";")[0].split()) if isinstance(exc, (ValueError, OverflowError)) else ""
            raise ScenarioError(f"line {node.start_mark.line + 1}",
                                f"invalid {tag} {value}" + (f" ({why})" if why else "")) from None

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # '!!set [1]'
            raise ScenarioError(f"line {node.start_mark.line + 1}", f"expected a mapping for {node.tag}")
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ScenarioError(f"line {key_node.start_mark.line + 1}", "merge keys ('<<') are not supported")
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable) or isinstance(key, tuple):
                raise ScenarioError(f"line {key_node.start_mark.line + 1}", "a mapping key must be a scalar")
            if key in seen:
                raise ScenarioError(f"line {key_node.start_mark.line + 1}", f"duplicate key {fmt_value(key)}")
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
    where = fmt_key(where)
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
        raise ScenarioError(where or "(top level)", "YAML nested too deeply") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a PyYAML corner we missed
        raise ScenarioError(where or "(top level)", f"invalid YAML ({type(exc).__name__})") from None


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
    return copy.deepcopy(_loads_cached(text, where))


@functools.lru_cache(maxsize=64)
def _loads_cached(text: str, where: str) -> Any:
    # profiles and catalog models are re-read by every scenario load, and PyYAML is slow (~10 ms for a
    # profile); keyed by the text itself, so an edited file is parsed again. Errors are not cached.
    return loads(text, where)
