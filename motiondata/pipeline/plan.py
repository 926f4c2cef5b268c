"""Plan: list every source's work units (cheap: no frame decoding) and group them into shards.

The plan is a pure function of the spec and the input listing, so shard ``i`` always holds the same
units: a rerun resumes by skipping shards whose manifest exists, and reproduces the same shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from motiondata.pipeline.spec import JobSpec
from motiondata.sources import open_source
from motiondata.store.errors_log import error_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPlan:
    index: int
    units: tuple[dict[str, Any], ...]  # each: {"source": int, "unit": {...}}

    def unit_ids(self) -> list[str]:
        return [f"{u['source']}:{u['unit']['id']}" for u in self.units]


def open_spec_source(spec: JobSpec, index: int):
    src = spec.sources[index]
    return open_source(src.kind, src.path, **src.options)


def list_units(spec: JobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All units in spec order, and error records for sources that could not be listed at all."""
    units, errors = [], []
    for i, src in enumerate(spec.sources):
        try:
            listed = open_spec_source(spec, i).units()
        except Exception as exc:  # a missing folder or unreadable index must not stop other sources
            log.error("source %s (%s) cannot be listed: %s", src.name, src.path, exc)
            errors.append(error_record(src.path, None, "plan", f"{type(exc).__name__}: {exc}"))
            continue
        if not listed:
            errors.append(error_record(src.path, None, "plan", "no episodes or videos found under this path"))
        units.extend({"source": i, "unit": u} for u in listed)
    return units, errors


def plan_shards(spec: JobSpec) -> tuple[list[ShardPlan], list[dict[str, Any]]]:
    units, errors = list_units(spec)
    per = spec.episodes_per_shard
    plans = [ShardPlan(i // per, tuple(units[i:i + per])) for i in range(0, len(units), per)]
    return plans, errors
