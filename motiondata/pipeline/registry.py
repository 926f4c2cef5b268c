"""Stage names -> classes. Stages are imported lazily so a job only loads the models it uses."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass
from typing import Any

from motiondata.errors import SpecError

STAGES: dict[str, str] = {
    "fast": "motiondata.tokenize.stage:FastStage",
    "vae": "motiondata.encode.vae:VaeStage",
    "motion": "motiondata.encode.motion:MotionStage",
    "keyframes": "motiondata.encode.keyframes:KeyframeStage",
    "text": "motiondata.encode.text:TextStage",
    "flow": "motiondata.encode.flow_stage:FlowStage",
    "image_embed": "motiondata.encode.image_embed:ImageEmbedStage",
    "text_tokens": "motiondata.encode.text_tokens:TextTokensStage",
    "universal_actions": "motiondata.tokenize.universal_stage:UniversalActionsStage",
    "motion_tokens": "motiondata.encode.motion_tokens:MotionTokensStage",
}


def stage_class(name: str) -> Any:
    """A shipped stage by name, or a plugin ``package.module:factory`` (a class or a callable returning a
    stage) from any installed package."""
    target = STAGES.get(name, name)
    if ":" not in target:
        raise SpecError(f"unknown stage {name!r}; available: {', '.join(sorted(STAGES))}, or a plugin "
                        "'package.module:factory'")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"stage {name!r}: cannot import {target} ({exc}); install the package that provides "
                        "it or fix the name") from exc


def valid_params(cls: Any) -> list[str]:
    """Parameter names a stage accepts (dataclass fields, or the factory's signature)."""
    if dataclasses.is_dataclass(cls):
        return sorted(f.name for f in dataclasses.fields(cls) if f.name != "name")
    try:
        return sorted(p for p in inspect.signature(cls).parameters if p not in ("self", "name"))
    except (TypeError, ValueError):
        return []


def plugin_version(name: str) -> str | None:
    """The installed version of a plugin stage's top-level package (for the manifest)."""
    if name in STAGES or ":" not in name:
        return None
    top = name.partition(":")[0].split(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class BoundStage:
    """A stage plus the spec's ``sources:`` filter (names of the sources it runs on; None = all)."""

    stage: Any
    sources: tuple[str, ...] | None = None
    plugin: str | None = None  # ``package.module:factory`` of a plugin stage (None: shipped)
    version: str | None = None  # the plugin package's installed version

    def manifest_entry(self) -> dict[str, Any]:
        """The stage's line in ``manifest.json``: name, config hash, source filter, plugin and version."""
        entry: dict[str, Any] = {"name": self.stage.name, "config_hash": self.stage.config_hash()}
        if self.sources is not None:
            entry["sources"] = list(self.sources)
        if self.plugin:
            entry.update(plugin=self.plugin, version=self.version)
        return entry

    def applies_to(self, source_name: str) -> bool:
        return self.sources is None or source_name in self.sources


def build_stage(params: dict[str, Any]) -> BoundStage:
    params = dict(params)
    name = params.pop("name")
    sources = params.pop("sources", None)
    if sources is not None and not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
        raise SpecError(f"stage {name!r}: `sources:` must be a list of source names, e.g. [aloha]")
    cls = stage_class(name)
    allowed = valid_params(cls)
    if "as" in params:
        if "prefix" not in allowed:
            raise SpecError(f"stage {name!r} does not support `as:` (its output names are fixed)")
        params["prefix"] = params.pop("as")
    unknown = sorted(set(params) - set(allowed)) if allowed else []
    if unknown:
        raise SpecError(f"stage {name!r}: unknown parameter(s) {unknown}; valid parameters: {', '.join(allowed)}")
    try:
        plugin = None if name in STAGES else name
        return BoundStage(cls(**params), tuple(sources) if sources is not None else None, plugin,
                          plugin_version(name))
    except (TypeError, ValueError) as exc:
        raise SpecError(f"stage {name!r}: {exc}; valid parameters: {', '.join(allowed)}") from exc


def build_stages(stage_params: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[BoundStage]:
    return [build_stage(p) for p in stage_params]
