"""Run a job: plan -> build the shards not yet done (Ray, or in-process) -> finalize the store.

Resuming into an existing ``--out`` keeps a finished shard only if its spec, stage configs and input
fingerprints still match (``resume.py``); otherwise the job refuses with one line, or, with
``rebuild_changed``, rebuilds exactly the affected shards. A shard that fails never blocks the job:
finalize always writes ``manifest.json`` (``complete: false`` and the failed shards, when some failed),
``stats.json`` and ``errors.jsonl`` of what exists. Files whose content is unchanged are not rewritten, so
a second run over a finished store writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import motiondata
from motiondata.errors import MotionDataError
from motiondata.pipeline import isolation, outcome, remote_out
from motiondata.pipeline.incremental import Increment, plan_increment, record_stage_tables, stage_keys
from motiondata.pipeline.plan import ShardPlan, plan_shards
from motiondata.pipeline.progress import Throughput, progress_bar
from motiondata.pipeline.remote_out import Remote
from motiondata.pipeline.resume import (changed_shards, existing_manifests, recorded_units, stale_reason,
                                        unmark_shard)
from motiondata.pipeline.shard_task import build_shard, job_stages
from motiondata.pipeline.spec import JobSpec
from motiondata.store import layout
from motiondata.store.episodes_zarr import ensure_store
from motiondata.store.manifest import check_job_manifest, finalize_view, read_job_manifest, shard_done, \
    software_versions
from motiondata.store.shards import file_sha256

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    out: Path | str  # the store: a folder, or the URL of a remote store (``--out s3://...``)
    shards_total: int = 0
    shards_built: int = 0
    shards_skipped: int = 0
    failed: list[str] = field(default_factory=list)  # "shard-000001: reason", one per failed shard
    num_samples: int = 0
    num_episodes: int = 0
    num_errors: int = 0
    num_skipped: int = 0  # units left out on purpose (records with stage "skip", e.g. near-static clips)
    complete: bool = False  # every planned shard is done
    problem: str | None = None  # set when the build as a whole did not work: nothing stored, a stage failed everywhere
    advice: str | None = None  # what to do about the records that remain (``--retry-errors``)
    failed_shards: list[dict[str, str]] = field(default_factory=list)  # [{"shard", "reason"}]


def _reconcile_spec(spec: JobSpec, out: Path, stages: list[dict[str, str]], rebuild_changed: bool
                    ) -> tuple[dict[int, dict[str, Any]], dict[int, Increment]]:
    """Existing shard manifests that still match the spec and stage configs, plus the stale ones that can be
    rebuilt from their episode tables (``incremental.py``: only stages or the recipe changed). Stale shards
    are refused with one line, or (``rebuild_changed``) rebuilt: incrementally where possible, else unmarked
    so they are planned and built again from the inputs."""
    manifests = existing_manifests(out)
    stale = {i: r for i, m in manifests.items() if (r := stale_reason(m, spec.hash(), stages))}
    if stale and not rebuild_changed:
        raise MotionDataError(next(iter(stale.values())))
    job = read_job_manifest(out) if stale else None
    increments = {}
    for index in stale:
        log.info("%s is rebuilt: %s", layout.shard_name(index), stale[index])
        increment = plan_increment(spec, job, manifests[index], stages)
        if increment is not None:
            increments[index] = increment
        else:
            unmark_shard(out, index, manifests.pop(index))
    return manifests, increments


def _intact(out: Path, index: int, manifest: dict[str, Any]) -> bool:
    """The tar's sha256 equals its manifest's (``validate.shard_intact`` where available)."""
    try:
        from motiondata.store.validate import shard_intact  # type: ignore[attr-defined]
    except ImportError:
        shard_intact = None
    if shard_intact is not None:
        return bool(shard_intact(out, index))
    tar = layout.shard_tar(out, index)
    return tar.is_file() and file_sha256(tar) == manifest.get("sha256")


def _is_done(out: Path, index: int, remote: Remote | None) -> bool:
    """``shard_done`` for a local store; for a remote one, the done set of its last pull (remote tar sizes)."""
    return remote.is_done(index) if remote else shard_done(out, index)


def _todo(out: Path, plans: list[ShardPlan], manifests: dict[int, dict[str, Any]], changed: dict[int, str],
          retry_errors: bool, verify: bool, remote: Remote | None = None) -> list[ShardPlan]:
    todo = []
    for plan in plans:
        manifest = manifests.get(plan.index)
        if manifest is None or plan.index in changed or not _is_done(out, plan.index, remote):
            todo.append(plan)
        elif retry_errors and manifest.get("errors"):
            todo.append(plan)
        elif verify and not (remote.intact(plan.index, manifest) if remote else _intact(out, plan.index, manifest)):
            log.warning("%s: sha256 differs from its manifest; rebuilding it", layout.shard_name(plan.index))
            todo.append(plan)
    return todo


def _settle(out: Path, plan: ShardPlan, exc: BaseException, failed: dict[int, str]) -> ShardPlan | None:
    """A shard task failed: blame the unit a dead worker was on and return the plan without it, or record
    the shard as failed (leaving nothing of it behind) and return ``None``."""
    blamed = isolation.crashed_unit(out, plan)
    if blamed is not None:
        log.warning("%s: the worker died on unit %s (%s); rebuilding without it", layout.shard_name(plan.index),
                    blamed["key"], exc)
        return plan.excluding(blamed["key"], f"the worker died while building it: {isolation.short_reason(exc)}")
    log.error("%s failed: %s", layout.shard_name(plan.index), exc)
    failed[plan.index] = isolation.short_reason(exc)
    isolation.discard(out, plan, None)
    return None


def _run_local(spec: JobSpec, out: Path, plans: list[ShardPlan], on_done: Callable[..., None],
               where: str | None = None) -> dict[int, str]:
    """Build ``plans`` in-process into ``where`` (a remote URL; default ``out``)."""
    failed: dict[int, str] = {}
    for plan in plans:
        current: ShardPlan | None = plan
        manifest = None
        while current is not None:
            try:
                manifest = build_shard(spec, current, where or out)
                current = None
            except Exception as exc:
                current = _settle(out, current, exc, failed)
        on_done(manifest)
    return failed


def _rebuild_incrementally(spec: JobSpec, out: Path, todo: list[ShardPlan], increments: dict[int, Increment],
                           on_done: Callable[..., None]) -> list[ShardPlan]:
    """Stale recipe shards whose spec changed only by stages or the recipe: rebuilt in-process from their
    episode tables; returns the rest of ``todo`` plus those that need the full rebuild after all."""
    from motiondata.pipeline.incremental_shard import rebuild_shards

    mine = [p for p in todo if p.index in increments and not p.excluded]
    if not mine:
        return todo
    fallback = {p.index for p in rebuild_shards(spec, out, mine, increments, on_done)}
    return [p for p in todo if p.index not in increments or p.excluded or p.index in fallback]


def _init_ray(address: str | None) -> bool:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False,
             **({} if address else {"num_cpus": max(2, os.cpu_count() or 2)}))
    return True


def _run_ray(spec: JobSpec, out: Path, plans: list[ShardPlan], address: str | None,
             on_done: Callable[..., None], executor: str = "ray", where: str | None = None) -> dict[int, str]:
    """Build ``plans`` on Ray; tasks write to ``where`` (a remote URL every node uploads to; default ``out``)."""
    import ray

    started = _init_ray(address)
    try:
        if _streaming(spec, executor):
            from motiondata.pipeline.ray_stream import Stream

            return Stream(spec, where or str(out), plans, on_done).run()
        return _run_shard_tasks(spec, out, plans, on_done, where or str(out))
    finally:
        if started:
            ray.shutdown()


def _streaming(spec: JobSpec, executor: str) -> bool:
    """``ray-stages`` always; plain ``ray`` when the cluster has GPUs and a stage declares ``num_gpus``
    (one task per shard would hide the GPUs from the stages)."""
    if executor == "ray-stages":
        return True
    import ray

    from motiondata.pipeline.ray_stages import wants_gpu

    return bool(ray.cluster_resources().get("GPU", 0)) and wants_gpu(job_stages(spec))


def _run_shard_tasks(spec: JobSpec, out: Path, plans: list[ShardPlan], on_done: Callable[..., None],
                     where: str) -> dict[int, str]:
    import ray

    task = ray.remote(num_cpus=spec.task_cpus, max_retries=1)(build_shard)
    pending = {task.remote(spec, plan, where): plan for plan in plans}
    failed: dict[int, str] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        plan = pending.pop(done[0])
        manifest = None
        try:
            manifest = ray.get(done[0])
        except Exception as exc:  # isolate the unit a dead worker was on, else report the shard
            retry = _settle(out, plan, exc, failed)
            if retry is not None:
                pending[task.remote(spec, retry, where)] = retry
                continue
        on_done(manifest)
    return failed


def remove_stale_temporaries(out: Path) -> int:
    """Temporary files of a killed run (``.name.*.tmp``) are never part of the store: remove them (logged)."""
    stale = [p for d in (out / layout.SHARDS_DIR, layout.zarr_store(out)) if d.is_dir()
             for p in d.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if stale:
        log.info("removed temporary files left by an interrupted run")
    return len(stale)


def run_job(spec: JobSpec, out: str | Path, ray_address: str | None = None, executor: str = "ray",
            show_progress: bool = True, *, retry_errors: bool = False, verify: bool = False,
            rebuild_changed: bool = False) -> JobResult:
    """Build (or resume) the store at ``out``. ``retry_errors`` rebuilds the shards holding error records;
    ``verify`` rebuilds shards whose tar sha256 differs from their manifest; ``rebuild_changed`` rebuilds
    shards whose inputs, spec or stage configs changed instead of refusing."""
    out, remote = remote_out.open_out(out)
    stages = stage_keys(job_stages(spec))
    manifests, increments = _reconcile_spec(spec, out, stages, rebuild_changed)
    plans, plan_errors = plan_shards(spec, recorded_units(manifests))
    plans = [dataclasses.replace(p, stages=tuple(stages)) for p in plans]
    changed = changed_shards(plans, manifests, retry_errors)
    if changed and not rebuild_changed:
        raise MotionDataError(changed[min(changed)])
    ensure_store(out)
    remove_stale_temporaries(out)
    increments = {p.index: increments[p.index] for p in plans if p.index in increments and p.index not in changed}
    stale = {**changed, **dict.fromkeys(increments, "stages")}
    todo = _todo(out, plans, manifests, stale, retry_errors, verify, remote)
    result = JobResult(out, len(plans), len(todo), len(plans) - len(todo))
    known = {i: finalize_view(m) for i, m in manifests.items()}  # finalize reads only what it does not know
    for plan in todo:
        known.pop(plan.index, None)
    log.info("%d shards planned, %d done already, %d to build", len(plans), result.shards_skipped, len(todo))
    failed: dict[int, str] = {}
    if todo:
        with progress_bar() as progress:
            bar = progress.add_task("shards", total=len(todo), visible=show_progress, episodes=0, rate="")
            advance = Throughput(progress, bar, out)

            def on_done(manifest: dict[str, Any] | None = None) -> None:  # a remote shard's task recorded its
                advance(manifest if remote else record_stage_tables(spec, out, manifest))  # tables already
                if manifest and isinstance(manifest.get("index"), int):
                    known[manifest["index"]] = finalize_view(manifest)

            todo = _rebuild_incrementally(spec, out, todo, increments, on_done)
            if todo and executor == "local":
                failed = _run_local(spec, out, todo, on_done, remote and remote.url)
            elif todo:
                failed = _run_ray(spec, out, todo, ray_address, on_done, executor, remote and remote.url)
            log.info("built %d episodes, %d frames %s", advance.episodes, advance.frames, advance.rate())
    result.shards_built -= len(failed)
    finalize(spec, out, plans, plan_errors, result, failed, remote=remote, known=known)
    _advise(result, retry_errors)
    return result


def _advise(result: JobResult, retried: bool) -> None:
    if result.num_errors:
        again = "still " if retried else ""
        result.advice = (f"{result.num_errors} inputs were {again}rejected (see errors.jsonl); after fixing them, "
                         "rerun with --retry-errors")
        log.info("%s", result.advice)  # the CLI prints advice and problem once, on stderr
    if result.problem:
        log.info("%s", result.problem)


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    layout.atomic_write_text(path, text)


def _tar_size(out: Path, index: int) -> int | None:
    try:
        return layout.shard_tar(out, index).stat().st_size
    except OSError:
        return None


def _done_manifests(out: Path, plans: list[ShardPlan], known: dict[int, dict[str, Any]] | None = None
                    ) -> dict[int, dict[str, Any]]:
    """The manifests of the done shards: ``known`` views (``finalize_view``: shards this run built or found
    done) where the tar still has the listed size (one stat), the others read once (one read and one tar
    stat per shard). Serial: handing whole manifests back from processes costs the parent about as much as
    parsing them (docs/bench/scale.md)."""
    from motiondata.store.manifest import done_manifests

    found, unknown = {}, []
    for plan in plans:
        view = (known or {}).get(plan.index)
        if view is not None and _tar_size(out, plan.index) == view.get("bytes"):
            found[plan.index] = view
        else:
            unknown.append(plan.index)
    found.update(done_manifests(out, unknown))
    return dict(sorted(found.items()))


def _unmark_stage_failure(out: Path, spec: JobSpec, manifests: dict[int, dict[str, Any]],
                          failed: dict[int, str]) -> str | None:
    """A stage that failed for every episode with one reason: its shards are not done (a rerun after the
    fix rebuilds them) and the job has a problem."""
    failure = outcome.stage_wide_failure(job_stages(spec), manifests)
    if failure is None:
        return None
    line = outcome.failure_line(failure)
    for index in failure["shards"]:
        unmark_shard(out, index, manifests.pop(index))
        failed.setdefault(index, line)
    return line


def finalize(spec: JobSpec, out: Path, plans: list[ShardPlan], plan_errors: list[dict[str, Any]],
             result: JobResult, failed: dict[int, str] | None = None, remote: Remote | None = None,
             known: dict[int, dict[str, Any]] | None = None) -> None:
    """Write the job files of what exists; ``known``: this run's views of done shards (not read again). A
    remote store is pulled first (other nodes wrote shards) and its changed job files uploaded last."""
    failed = dict(failed or {})
    if remote is not None:
        remote.pull(job_files=False)
    manifests = remote.done_manifests([p.index for p in plans]) if remote else _done_manifests(out, plans, known)
    result.problem = _unmark_stage_failure(out, spec, manifests, failed)
    for plan in plans:
        if plan.index not in manifests:
            failed.setdefault(plan.index, "not built")
    errors = list(plan_errors) + [e for i in sorted(manifests) for e in manifests[i]["errors"]]
    stats, conflicts = outcome.merge_stats(out, sorted(manifests))
    result.num_samples = sum(m["num_samples"] for m in manifests.values())
    result.num_episodes = sum(len(m["episodes"]) for m in manifests.values())
    result.num_skipped = sum(1 for e in errors if e.get("stage") == "skip")
    result.num_errors = len(errors) - result.num_skipped
    result.failed_shards = [{"shard": layout.shard_name(i), "reason": failed[i]} for i in sorted(failed)]
    result.failed = [f"{s['shard']}: {s['reason']}" for s in result.failed_shards]
    result.complete = not failed
    if result.problem is None and result.num_episodes == 0:
        result.problem = outcome.nothing_stored_line(errors, failed)
    job = _job_document(spec, manifests, result, conflicts)
    problems = check_job_manifest(job)
    if problems:
        raise MotionDataError("job manifest does not match its schema: " + "; ".join(problems))
    _write_if_changed(layout.job_manifest(out), json.dumps(job, indent=2, sort_keys=True) + "\n")
    _write_if_changed(layout.stats_file(out), json.dumps(stats, indent=2, sort_keys=True) + "\n")
    lines = sorted(json.dumps(e, sort_keys=True) for e in errors)
    _write_if_changed(layout.errors_file(out), "".join(line + "\n" for line in lines))
    if remote is not None:
        result.out = remote.publish()  # report.md naming the URL, then the changed job files uploaded
        return
    from motiondata.inspect.report import write_report

    write_report(out)


def _job_document(spec: JobSpec, manifests: dict[int, dict[str, Any]], result: JobResult,
                  conflicts: list[str]) -> dict[str, Any]:
    """manifest.json's document; above ``INDEX_THRESHOLD`` shards the shard list is written to
    ``shards/index.jsonl`` in ``result.out`` and the document names it (``manifest.externalize_shards``)."""
    from motiondata.store.manifest import externalize_shards

    job = {
        "format_version": motiondata.FORMAT_VERSION, "name": spec.name, "spec": spec.to_dict(),
        "spec_hash": spec.hash(), "software": software_versions(),
        "stages": [b.manifest_entry() for b in job_stages(spec)],
        "shards": [{"shard": m["shard"], "tar": m["tar"], "num_samples": m["num_samples"],
                    "sha256": m["sha256"]} for _, m in sorted(manifests.items())],
        "num_samples": result.num_samples, "num_episodes": result.num_episodes, "num_errors": result.num_errors, "num_skipped": result.num_skipped,
        "complete": result.complete, "created_by": f"motiondata {motiondata.__version__}",
    }
    if result.failed_shards:
        job["failed_shards"] = result.failed_shards
    if result.problem:
        job["problem"] = result.problem
    if conflicts:
        job["stats_conflicts"] = conflicts
    return externalize_shards(result.out, job)
