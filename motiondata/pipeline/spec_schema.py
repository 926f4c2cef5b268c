"""Reading a spec file safely and checking it against ``schemas/spec.schema.json``.

``read_spec_yaml`` parses plain YAML only (no python tags, no duplicate keys, no alias bombs) and turns
every parse problem into one ``SpecError`` line with the line and column. ``schema_problem`` returns the
first schema violation as one line naming the key path and the fix, e.g.
``spec: windows.lenght: unknown key; valid keys: length, stride``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from motiondata.errors import SpecError

MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML, not a data file
MAX_SPEC_NODES = 100_000  # after alias expansion: refuses "billion laughs" specs
TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string", "object": "a mapping",
              "array": "a list", "boolean": "true or false", "null": "null"}


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would keep the last one silently)."""


def _mapping_without_duplicates(loader: _SpecLoader, node: yaml.MappingNode) -> dict:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r} (first on line {seen[key_node.value] + 1})",
                    key_node.start_mark)
            seen[key_node.value] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> SpecError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = str(getattr(exc, "problem", None) or exc).replace("\n", " ").strip()
    if "python/" in problem:
        return SpecError(f"spec {path}{where}: python tags (!!python/...) are not allowed; a spec is plain YAML "
                         "(mappings, lists, strings, numbers): remove the tag")
    if "could not determine a constructor" in problem:
        return SpecError(f"spec {path}{where}: {problem}; remove the tag, a spec is plain YAML")
    if problem.startswith("duplicate key"):
        return SpecError(f"spec {path}{where}: {problem}; keep one of them")
    return SpecError(f"spec {path} is not valid YAML{where}: {problem}; fix the syntax there "
                     "(indentation, a missing colon or quote)")


def _check_size(data: Any) -> None:
    """Count nodes with aliases expanded; a small file can expand to billions (the YAML alias bomb)."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_SPEC_NODES:
            raise SpecError(f"spec expands to more than {MAX_SPEC_NODES} values (YAML aliases repeated); "
                            "write the spec out without nested aliases")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def read_spec_yaml(path: Path) -> Any:
    """The parsed YAML of a spec file, or one ``SpecError`` line saying what is wrong and how to fix it."""
    if not path.exists():
        raise SpecError(f"spec file {path} not found; pass a YAML file like pipelines/demo.yaml")
    if path.is_dir():
        raise SpecError(f"spec {path} is a folder; pass a YAML file like pipelines/demo.yaml")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"spec {path} is larger than {MAX_SPEC_BYTES >> 20} MiB; a spec is a short YAML file, "
                        "pass that instead of a data file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "pass a YAML file like pipelines/demo.yaml") from exc
    except OSError as exc:
        raise SpecError(f"spec {path} cannot be read ({exc.strerror}); check the path and its permissions") from exc
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_problem(path, exc) from exc
    _check_size(data)
    return data


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    from motiondata.store.manifest import load_schema

    return jsonschema.Draft202012Validator(load_schema("spec"))


def key_path(parts: Any) -> str:
    """``['windows', 'length']`` -> ``windows.length``; ``['sources', 0, 'kind']`` -> ``sources[0].kind``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: jsonschema.ValidationError) -> str:
    where, kind, schema, value = key_path(error.absolute_path), error.validator, error.schema, error.instance
    if kind == "additionalProperties":
        known = schema.get("properties", {})
        extra = sorted(str(k) for k in value if k not in known)
        return f"{key_path([*error.absolute_path, extra[0]])}: unknown key; valid keys: {', '.join(sorted(known))}"
    where = where or "(top level)"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return f"{where}: missing key {missing[0]!r}; add it"
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(TYPE_NAMES.get(t, t) for t in types)
        return f"{where}: must be {wanted}, got {_short(value)}"
    if kind == "enum":
        return f"{where}: {_short(value)} is not one of {', '.join(map(str, error.validator_value))}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{where}: must be {bounds[kind]} {error.validator_value}, got {_short(value)}"
    if kind in ("minItems", "maxItems"):
        word = "at least" if kind == "minItems" else "at most"
        return f"{where}: needs {word} {error.validator_value} item(s), got {len(value)}"
    if kind == "minProperties":
        return f"{where}: needs at least {error.validator_value} entry, e.g. `actions: {{from: actions}}`"
    if kind == "pattern":
        return f"{where}: name {_short(value)} may only use letters, digits, _, . and -"
    if kind == "oneOf" and "offsets" in where:
        return f"{where}: must be a list of numbers or {{start, stop, step}} with step > 0, got {_short(value)}"
    return f"{where}: {error.message}"


def schema_problem(data: Any) -> str | None:
    """The most relevant violation of ``schemas/spec.schema.json`` as one line, or None when valid."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    return None if error is None else "spec: " + _describe(error)
