"""Stage names -> classes. Stages are imported lazily so a job only loads the models it uses."""

from __future__ import annotations

import importlib
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


def build_stage(params: dict[str, Any]) -> Any:
    params = dict(params)
    name = params.pop("name")
    cls = stage_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise SpecError(f"stage {name!r}: {exc}; see docs for its parameters") from exc


def build_stages(stage_params: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[Any]:
    return [build_stage(p) for p in stage_params]
