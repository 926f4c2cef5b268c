"""Which fields the slim trainer reads: observed inputs, head -> target field, the flow validity field.

``--inputs auto`` takes every ``obs.*`` field of the store; ``--targets auto`` maps each head to the field
pipelines/train_demo.yaml names (``target.zm``, ``target.flow`` + ``target.flow_valid``, ``target.fast``,
``target.codes``, ``target.actions``); a head whose target the store lacks is skipped with a log line.
Fields are listed from every shard manifest, so the robot-only fields of a mixed robot + video store are
found even when its first sample is a video clip.
"""

from __future__ import annotations

import logging
from typing import Any

from motiondata.loader.shard_reader import _read_json
from motiondata.loader.streaming import available_fields, resolve_shards
from motiondata.usage import UsageError

log = logging.getLogger("motiondata.train")
DEFAULT_TARGETS = {"zm": "target.zm", "flow": "target.flow", "fast": "target.fast", "keyframes": "target.codes",
                   "actions": "target.actions"}


def names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def store_fields(store: str) -> tuple[list[str], dict[str, Any] | None]:
    """Every field any shard manifest lists (a mixed store's first sample may lack some), and the job spec."""
    shards = resolve_shards(store)
    names: set[str] = set()
    for shard in shards:
        doc = _read_json(shard.url[: -len(".tar")] + ".json") if shard.url.endswith(".tar") else None
        names |= set((doc or {}).get("fields") or {})
    job = _read_json(store.rstrip("/") + "/manifest.json") if not store.endswith(".tar") and "*" not in store else None
    return sorted(names) or available_fields(store), (job or {}).get("spec")


def choose_fields(cfg: Any, available: list[str]) -> tuple[list[str], dict[str, str], str | None]:
    """``(inputs, head -> target field, flow validity field)``; heads whose field the store lacks are skipped."""
    has = set(available)
    inputs = [f for f in available if f.startswith("obs.") and not f.endswith((".pad", ".len"))] \
        if cfg.inputs == "auto" else names(cfg.inputs)
    missing = [f for f in inputs if f not in has]
    if missing:
        log.info("inputs the store lacks, left out: %s", missing)
    inputs = [f for f in inputs if f in has]
    if not inputs:
        raise UsageError(f"--inputs {cfg.inputs}: the store has none of them (it has {sorted(has)[:12]}); name "
                         "observed fields with --inputs, or build a recipe store (pipelines/train_demo.yaml)")
    targets = DEFAULT_TARGETS if cfg.targets == "auto" else dict(t.partition("=")[::2] for t in names(cfg.targets))
    wanted = list(targets) if cfg.heads == "auto" else names(cfg.heads)
    chosen = {h: targets[h] for h in wanted if h in targets and targets[h] in has}
    for h in sorted(set(wanted) - set(chosen)):
        log.info("skipping head %s: the store has no target field %s", h, targets.get(h, "(none given)"))
    if not chosen:
        raise UsageError(f"no head can train on {cfg.store}: it has none of the target fields {sorted(targets.values())}; "
                         "name them with --targets head=field")
    valid = None
    if "flow" in chosen:
        name = chosen["flow"]
        valid = next((v for v in (f"{name}_valid", name.replace("tracks", "valid"), f"{name}.valid") if v in has
                      and v != name), None)
        if valid is None:
            raise UsageError(f"flow target {name} has no validity field ({name}_valid); add it to the recipe")
    return inputs, chosen, valid


def read_fields(names: list[str]) -> list[str]:
    return [f for n in names for f in (n, f"{n}.pad", f"{n}.len")]
