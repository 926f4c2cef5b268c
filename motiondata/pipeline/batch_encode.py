"""Recipe mode: run the stages over a group of episodes at once.

A stage with ``build_tables_batch(items)`` (the VAE: a lockstep causal encode) gets every episode of the
group in one call, so the model sees full batches; other stages run episode by episode. If a batched
call raises, the group falls back to one episode at a time, so one bad episode is one record and its
neighbours go on. Results do not depend on the group: the same shard always forms the same groups.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from motiondata.pipeline.table_build import run_stage, start_item
from motiondata.store.errors_log import error_record

log = logging.getLogger(__name__)
EPISODES_PER_GROUP = 4  # bounds memory: a group's decoded episodes are held together


def run_batched(stage: Any, items: list[dict[str, Any]]) -> bool:
    batch = getattr(stage, "build_tables_batch", None)
    if batch is None or len(items) < 2:
        return False
    try:
        batch(items)
        return True
    except Exception as exc:  # fall back to one episode at a time: the culprit becomes one record
        log.warning("stage %s failed on a batch of %d episodes (%s); retrying them one by one",
                    getattr(stage, "name", stage), len(items), exc)
        return False


def encode_group(stages: list[Any], recipe: Any, group: list[tuple[dict[str, Any], Any]],
                 record: Callable[[dict[str, Any]], None]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``group``: (plan entry, prepared Episode) pairs -> (entry, item) for the episodes every stage
    served; ``record`` receives an error record for each episode a stage failed on."""
    items = [start_item(episode, recipe) for _, episode in group]
    alive = list(range(len(items)))
    for bound in stages:
        members = [i for i in alive if bound.applies_to(items[i]["episode"].source)]
        if run_batched(bound.stage, [items[i] for i in members]):
            continue
        for i in members:
            try:
                items[i] = run_stage(bound.stage, items[i])
            except Exception as exc:
                episode = items[i]["episode"]
                log.warning("stage %s failed on %s: %s", bound.stage.name, episode.id, exc)
                record(error_record(group[i][0]["unit"].get("file", ""), episode.id, bound.stage.name,
                                    f"{type(exc).__name__}: {exc}"))
                alive.remove(i)
    return [(group[i][0], items[i]) for i in alive]
