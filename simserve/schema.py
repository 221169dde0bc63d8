"""JSON Schema of scenario files, generated from the same pydantic definitions the loader uses."""
from __future__ import annotations

import json

from .scenario import Scenario


def scenario_schema() -> dict:
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "simserve scenario"
    return schema


def scenario_schema_json() -> str:
    return json.dumps(scenario_schema(), indent=2, sort_keys=True) + "\n"
