"""Stage names -> classes. Stages are imported lazily so a job only loads the models it uses."""

from __future__ import annotations

import importlib
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
}


def stage_class(name: str) -> type:
    if name not in STAGES:
        raise SpecError(f"unknown stage {name!r}; available: {', '.join(sorted(STAGES))}")
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class BoundStage:
    """A stage plus the spec's ``sources:`` filter (names of the sources it runs on; None = all)."""

    stage: Any
    sources: tuple[str, ...] | None = None

    def applies_to(self, source_name: str) -> bool:
        return self.sources is None or source_name in self.sources


def build_stage(params: dict[str, Any]) -> BoundStage:
    params = dict(params)
    name = params.pop("name")
    sources = params.pop("sources", None)
    if sources is not None and not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
        raise SpecError(f"stage {name!r}: `sources:` must be a list of source names, e.g. [aloha]")
    cls = stage_class(name)
    try:
        return BoundStage(cls(**params), tuple(sources) if sources is not None else None)
    except TypeError as exc:
        raise SpecError(f"stage {name!r}: {exc}; see docs for its parameters") from exc


def build_stages(stage_params: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[BoundStage]:
    return [build_stage(p) for p in stage_params]
