"""The heterogeneous streaming executor (``executor="ray-stages"``, or ``"ray"`` on a cluster with GPUs
when a stage declares ``num_gpus``): a small driver-side scheduler over Ray tasks and actor pools.

- CPU work (read, decode, resize, CPU stages) runs as tasks with fractional ``num_cpus`` (``ray.task_cpus``);
  GPU stages run in actor pools, ``num_gpus`` per actor from the stage (fractional: several actors share a
  GPU), ``actor_cpus`` (default 0.25) so actors never hold whole CPUs on small machines.
- Batches for a pool are formed across episodes and shards (``batch_episodes`` units per actor call; a
  short batch only when nothing upstream can fill it).
- Memory is bounded: at most ``max_inflight`` units are between "admitted" and "their shard is written";
  frames travel in Ray's object store, the driver holds only small metas and references.
- A shard is written by one task (``ray_stages.write_shard_from``) once all its units are through; its
  manifest is written last, so kill -9 + rerun resumes exactly like the other executors.
- A unit whose task or actor call dies is retried alone once, then left out of its shard as one ``shard``
  record (its neighbours go on).

Why not Ray Data: a shard must gather its own episodes and be written with its manifest last (a groupby,
an all-to-all step that is not streaming), per-unit failures must become records naming the unit (a Ray
Data UDF exception fails blocks, not rows), and items hold Episode objects and variable-shape tables that
Ray Data would convert to Arrow columns (copies, dtype changes). A minimal actor queue keeps all three.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from motiondata.pipeline import isolation, remote_out
from motiondata.pipeline.batch_encode import EPISODES_PER_GROUP
from motiondata.pipeline.recipe import recipe_of
from motiondata.pipeline.plan import ShardPlan
from motiondata.pipeline.ray_stages import Segment, StageActor, decode_unit, segment_unit, segments_of, \
    write_shard_from
from motiondata.pipeline.shard_task import job_stages
from motiondata.pipeline.spec import JobSpec

log = logging.getLogger(__name__)

DEFAULTS = {"batch_episodes": 4, "actor_cpus": 0.25, "max_inflight": 0, "max_actors": 0}


def settings(spec: JobSpec) -> dict[str, float]:
    """``ray:`` settings of the spec with defaults (``max_inflight``/``max_actors`` 0: derived)."""
    raw = (spec.raw or {}).get("ray") or {}
    return {k: raw.get(k, v) for k, v in DEFAULTS.items()}


@dataclass
class Unit:
    entry: dict[str, Any]
    shard: int
    position: int = 0  # index of the segment it waits for / runs in
    ref: Any = None  # its result so far (object store)
    before: Any = None  # its input to the segment running now (to run it again alone)
    solo: bool = False  # its batch failed once: it runs alone now
    group: tuple[int, int] = (0, 0)  # (shard, position in the plan // EPISODES_PER_GROUP): recipe batches
    order: int = 0  # position in its shard's plan


@dataclass
class Batch:
    actor: Any
    remaining: int


@dataclass
class Shard:
    plan: ShardPlan
    waiting: int  # units not yet through every segment
    admitted: int  # units counted in the in-flight bound until the shard is written
    results: dict[str, Any] = field(default_factory=dict)
    frames: int = 0


def pool_sizes(segments: list[Segment], gpus: float, units: int, max_actors: int) -> dict[int, tuple[int, float]]:
    """segment index -> (actors, num_gpus per actor). GPUs are split evenly between GPU segments; a
    segment asking more than its share gets its share (fractional) so pools never wait on each other."""
    gpu_segments = [i for i, s in enumerate(segments) if s.kind == "gpu"]
    sizes = {}
    for i in gpu_segments:
        share = gpus / len(gpu_segments) if gpus else 0.0
        per = min(segments[i].num_gpus, share) if share else 0.0
        actors = int(share // per) if per else 2
        actors = max(1, min(actors, units, max_actors or actors))
        sizes[i] = (actors, per)
    return sizes


def _position(plan: ShardPlan, entry: dict[str, Any]) -> int:
    return next(i for i, u in enumerate(plan.units) if u["key"] == entry["key"])


def _group_of(plan: ShardPlan, entry: dict[str, Any]) -> tuple[int, int]:
    return plan.index, _position(plan, entry) // EPISODES_PER_GROUP


class Stream:
    """One run of the scheduler over the shards to build."""

    def __init__(self, spec: JobSpec, out: str, plans: list[ShardPlan], on_done: Callable[[dict], None]):
        import ray

        self.ray, self.spec, self.out, self.on_done = ray, spec, out, on_done
        self.local = remote_out.local_of(out)  # the driver's folder of ``out`` (a URL's staging folder)
        self.cfg = settings(spec)
        self.segments = segments_of(job_stages(spec))
        self.spec_ref = ray.put(spec)
        self.shards = {p.index: Shard(p, len(self._units_of(p)), len(self._units_of(p))) for p in plans}
        self.todo = deque(Unit(e, p.index, group=_group_of(p, e), order=_position(p, e))
                          for p in plans for e in self._units_of(p))
        # Recipe mode: a GPU batch is exactly one shard group, as ShardBuilder forms them in-process, so a
        # batched stage (the VAE's lockstep encode) sees the same batch and writes the same bytes.
        self.canonical = recipe_of(spec) is not None
        self.group_size: dict[tuple[int, int], int] = {}
        for unit in self.todo:
            self.group_size[unit.group] = self.group_size.get(unit.group, 0) + 1
        self.waiting: dict[int, list[Unit]] = {i: [] for i, s in enumerate(self.segments) if s.kind == "gpu"}
        self.running: dict[Any, tuple[Any, Batch | None]] = {}  # meta ref -> (Unit, its batch) | (shard index, None)
        self.inflight = 0
        self.failed: dict[int, str] = {}
        cpus = float(spec.task_cpus)
        self.decode_task = ray.remote(num_cpus=cpus, num_returns=2, max_retries=1)(decode_unit)
        self.segment_task = ray.remote(num_cpus=cpus, num_returns=2, max_retries=1)(segment_unit)
        self.write_task = ray.remote(num_cpus=cpus, max_retries=1)(write_shard_from)
        self._make_pools(len(self.todo))

    @staticmethod
    def _units_of(plan: ShardPlan) -> list[dict[str, Any]]:
        excluded = dict(plan.excluded)
        return [u for u in plan.units if u["key"] not in excluded]

    def _make_pools(self, units: int) -> None:
        gpus = float(self.ray.cluster_resources().get("GPU", 0))
        sizes = pool_sizes(self.segments, gpus, max(units, 1), int(self.cfg["max_actors"]))
        actor_cls = self.ray.remote(StageActor)
        self.pools: dict[int, list[Any]] = {}
        self.busy: dict[Any, int] = {}
        for index, (count, per) in sizes.items():
            options = {"num_gpus": per, "num_cpus": float(self.cfg["actor_cpus"]), "max_restarts": 1}
            self.pools[index] = [actor_cls.options(**options).remote(self.spec, self.segments[index])
                                 for _ in range(count)]
            log.info("stage pool %s: %d actors, %.2f GPU each", [self.segments[index].stages], count, per)
        actors = sum(len(p) for p in self.pools.values())
        per_shard = max((s.waiting for s in self.shards.values()), default=1)
        derived = max(2 * per_shard, 4 * int(self.cfg["batch_episodes"]) * max(actors, 1), 8)
        self.cap = int(self.cfg["max_inflight"]) or derived
        self.cap = max(self.cap, per_shard)  # a shard's units must fit, or nothing is ever written

    def actor_ids(self) -> list[dict[str, Any]]:
        return self.ray.get([a.whoami.remote() for pool in self.pools.values() for a in pool])

    # -- submitting ---------------------------------------------------------------------------------
    def _file(self, unit: Unit) -> str:
        return unit.entry["unit"].get("file", "")

    def _admit(self) -> None:
        while self.todo and self.inflight < self.cap:
            unit = self.todo.popleft()
            self.inflight += 1
            self._submit_cpu(unit, self.decode_task, (self.spec_ref, self.segments[0], unit.entry))

    def _submit_cpu(self, unit: Unit, task: Any, args: tuple) -> None:
        unit.before = unit.ref
        meta, unit.ref = task.remote(*args)
        self.running[meta] = (unit, None)

    def _advance(self, unit: Unit) -> None:
        """Move a unit to its next segment (a cpu task, a pool queue) or to its shard."""
        unit.position += 1
        if unit.position >= len(self.segments):
            return self._arrive(unit)
        segment = self.segments[unit.position]
        if segment.kind == "gpu":
            self.waiting[unit.position].append(unit)
            return
        self._submit_cpu(unit, self.segment_task, (self.spec_ref, segment, self._file(unit), unit.ref))

    def _upstream_busy(self, position: int) -> bool:
        """Could a unit still arrive at segment ``position`` (one running, or queued, before it)?"""
        running = any(isinstance(u, Unit) and u.position < position for u, _ in self.running.values())
        return running or any(q for p, q in self.waiting.items() if p < position)

    def _complete_groups(self, queue: list[Unit]) -> list[list[Unit]]:
        """Recipe mode: the queued units that form a whole shard group (solo units alone), in queue order."""
        groups: dict[tuple[int, int], list[Unit]] = {}
        for unit in queue:
            groups.setdefault((unit.group, id(unit)) if unit.solo else (unit.group, 0), []).append(unit)
        complete = [g for key, g in groups.items() if key[1] or len(g) == self.group_size[key[0]]]
        return [sorted(g, key=lambda u: u.order) for g in complete]  # plan order, as in-process

    def _flush_groups(self) -> None:
        for position, queue in self.waiting.items():
            for batch in self._complete_groups(queue):
                actor = min(self.pools[position], key=lambda a: self.busy.get(a, 0))
                queue[:] = [u for u in queue if all(u is not b for b in batch)]
                self._submit_batch(actor, batch)

    def _flush_batches(self) -> None:
        if self.canonical:
            return self._flush_groups()
        size = int(self.cfg["batch_episodes"])
        for position, queue in self.waiting.items():
            for actor in sorted(self.pools[position], key=lambda a: self.busy.get(a, 0)):
                if not queue or self.busy.get(actor, 0) >= 2:
                    break
                if len(queue) < size and not queue[0].solo and self._upstream_busy(position):
                    break
                take = 1 if queue[0].solo else size
                batch, queue[:] = queue[:take], queue[take:]
                self._submit_batch(actor, batch)

    def _submit_batch(self, actor: Any, batch: list[Unit]) -> None:
        refs = actor.run.options(num_returns=2 * len(batch)).remote(
            [self._file(u) for u in batch], *[u.ref for u in batch])
        group = Batch(actor, len(batch))
        for unit, meta, ref in zip(batch, refs[:len(batch)], refs[len(batch):]):
            unit.before, unit.ref = unit.ref, ref
            self.running[meta] = (unit, group)
        self.busy[actor] = self.busy.get(actor, 0) + 1

    def _write(self, shard: Shard) -> None:
        refs = [shard.results[u["key"]] for u in shard.plan.units if u["key"] in shard.results]
        self.running[self.write_task.remote(self.spec_ref, shard.plan, self.out, *refs)] = (shard.plan.index, None)

    # -- completions --------------------------------------------------------------------------------
    def _arrive(self, unit: Unit) -> None:
        shard = self.shards[unit.shard]
        shard.results[unit.entry["key"]] = unit.ref
        shard.waiting -= 1
        if shard.waiting == 0:
            self._write(shard)

    def _unit_failed(self, unit: Unit, batch: Batch | None, exc: BaseException) -> None:
        if batch is not None and not unit.solo:  # its batch died: run it alone before blaming it
            unit.solo, unit.ref = True, unit.before
            self.waiting[unit.position].insert(0, unit)
            return
        key = unit.entry["key"]
        log.warning("unit %s: its worker died (%s); leaving it out of its shard", key, exc)
        shard = self.shards[unit.shard]
        shard.plan = shard.plan.excluding(key, f"the worker died while building it: {isolation.short_reason(exc)}")
        shard.waiting -= 1
        if shard.waiting == 0:
            self._write(shard)

    def _shard_done(self, index: int, ref: Any) -> None:
        shard = self.shards[index]
        try:
            manifest = self.ray.get(ref)
        except Exception as exc:  # a writer that died: blame the unit it was on, else fail the shard
            blamed = isolation.crashed_unit(self.local, shard.plan)
            if blamed is not None:
                reason = f"the worker died while building it: {isolation.short_reason(exc)}"
                shard.plan = shard.plan.excluding(blamed["key"], reason)
                return self._write(shard)
            log.error("%s failed: %s", shard.plan.index, exc)
            self.failed[index] = isolation.short_reason(exc)
            isolation.discard(self.local, shard.plan, None)
            manifest = None
        self.inflight -= shard.admitted
        shard.results.clear()
        if manifest is not None:
            self.on_done({**manifest, "frames": shard.frames})
        else:
            self.on_done({})

    def _complete(self, ref: Any) -> None:
        what, batch = self.running.pop(ref)
        if not isinstance(what, Unit):
            return self._shard_done(what, ref)
        if batch is not None:
            batch.remaining -= 1
            if batch.remaining == 0:
                self.busy[batch.actor] -= 1
        try:
            meta = self.ray.get(ref)
        except Exception as exc:
            return self._unit_failed(what, batch, exc)
        if what.position == len(self.segments) - 1:
            self.shards[what.shard].frames += int(meta["frames"])
        self._advance(what)

    def run(self) -> dict[int, str]:
        for shard in self.shards.values():
            if shard.waiting == 0:
                self._write(shard)
        while self.todo or self.running or any(self.waiting.values()):
            self._admit()
            self._flush_batches()
            refs = list(self.running)
            if not refs:
                continue
            self.ray.wait(refs, num_returns=1)
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._complete(ref)
        return self.failed
