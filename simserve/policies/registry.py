"""Registries of pluggable parts. A policy is one module: its params model, its class, and one
``@REGISTRY.register(Params)`` line. The scenario schema is built from what is registered."""
from __future__ import annotations

import typing
from typing import Annotated, Any, Union

from pydantic import Field


class Registry:
    """Name -> (params model, implementation). ``tag`` is the YAML key that selects the entry."""

    def __init__(self, kind: str, tag: str = "policy"):
        self.kind, self.tag = kind, tag
        self._entries: dict[str, tuple[type, Any]] = {}

    def register(self, params: type):
        """Class decorator. ``params`` must declare ``<tag>: Literal['name']``."""
        name = typing.get_args(params.model_fields[self.tag].annotation)[0]

        def deco(impl):
            if name in self._entries:
                raise RuntimeError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = (params, impl)
            impl.Params = params
            return impl
        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def impl(self, name: str):
        return self._entries[name][1]

    def default(self, name: str):
        """The params of entry ``name`` with every default (what an omitted section means)."""
        return self._entries[name][0](**{self.tag: name})

    def params_types(self) -> list[type]:
        return [self._entries[n][0] for n in self.names()]

    def union(self) -> Any:
        """The pydantic type accepting any registered params model, selected by the tag key."""
        types = self.params_types()
        if len(types) == 1:
            return types[0]
        return Annotated[Union[tuple(types)], Field(discriminator=self.tag)]

    def describe(self) -> list[dict]:
        out = []
        for name in self.names():
            params, impl = self._entries[name]
            doc = (impl.__doc__ or "").strip().splitlines()
            out.append({"kind": self.kind, "name": name, "summary": doc[0] if doc else "",
                        "params": [k for k in params.model_fields if k != self.tag]})
        return out


SCHEDULERS = Registry("scheduler")
ROUTERS = Registry("router")
COST_MODELS = Registry("cost_model", tag="kind")
ALL = (SCHEDULERS, ROUTERS, COST_MODELS)
