"""Run a job: plan -> build the shards not yet done (Ray, or in-process) -> finalize the store.

Finalizing merges the shard manifests into ``manifest.json``, the partial stats into ``stats.json`` and
the error records into ``errors.jsonl``; files whose content is unchanged are not rewritten, so a
second run over a finished store writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import motiondata
from motiondata.errors import MotionDataError
from motiondata.pipeline.plan import ShardPlan, plan_shards
from motiondata.pipeline.shard_task import build_shard, job_stages
from motiondata.pipeline.spec import JobSpec
from motiondata.store import layout
from motiondata.store.episodes_zarr import ensure_store
from motiondata.store.manifest import check_job_manifest, read_shard_manifest, shard_done, software_versions
from motiondata.store.stats import merge_partials, read_partial_stats

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    out: Path
    shards_total: int = 0
    shards_built: int = 0
    shards_skipped: int = 0
    failed: list[str] = field(default_factory=list)
    num_samples: int = 0
    num_episodes: int = 0
    num_errors: int = 0


def _progress() -> Progress:
    return Progress(TextColumn("[bold]shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def _check_same_spec(spec: JobSpec, out: Path, plans: list[ShardPlan]) -> None:
    for plan in plans:
        manifest = read_shard_manifest(out, plan.index)
        if manifest and manifest.get("spec_hash") != spec.hash():
            raise MotionDataError(f"{out} holds shards built from a different spec "
                                  f"({layout.shard_name(plan.index)}); build into a new --out directory or delete it")


def _run_local(spec: JobSpec, out: Path, plans: list[ShardPlan], on_done: Callable[[], None]) -> list[str]:
    failed = []
    for plan in plans:
        try:
            build_shard(spec, plan, out)
        except Exception as exc:
            log.error("%s failed: %s", layout.shard_name(plan.index), exc)
            failed.append(f"{layout.shard_name(plan.index)}: {type(exc).__name__}: {exc}")
        on_done()
    return failed


def _run_ray(spec: JobSpec, out: Path, plans: list[ShardPlan], address: str | None,
             on_done: Callable[[], None]) -> list[str]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(2, os.cpu_count() or 2)}))
    task = ray.remote(num_cpus=spec.task_cpus, max_retries=1)(build_shard)
    pending = {task.remote(spec, plan, str(out)): plan.index for plan in plans}
    failed = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                ray.get(done[0])
            except Exception as exc:  # a crashed shard is reported; a rerun retries it
                failed.append(f"{layout.shard_name(index)}: {exc}")
            on_done()
    finally:
        if started:
            ray.shutdown()
    return failed


def remove_stale_temporaries(out: Path) -> int:
    """Temporary files of a killed run (``.name.*.tmp``) are never part of the store: remove them."""
    stale = [p for d in (out / layout.SHARDS_DIR, layout.zarr_store(out)) if d.is_dir()
             for p in d.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return len(stale)


def run_job(spec: JobSpec, out: str | Path, ray_address: str | None = None, executor: str = "ray",
            show_progress: bool = True) -> JobResult:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plans, plan_errors = plan_shards(spec)
    _check_same_spec(spec, out, plans)
    ensure_store(out)
    if remove_stale_temporaries(out):
        log.info("removed temporary files left by an interrupted run")
    todo = [p for p in plans if not shard_done(out, p.index)]
    result = JobResult(out, len(plans), len(todo), len(plans) - len(todo))
    log.info("%d shards planned, %d done already, %d to build", len(plans), result.shards_skipped, len(todo))
    if todo:
        with _progress() as progress:
            bar = progress.add_task("shards", total=len(todo), visible=show_progress)
            advance = lambda: progress.advance(bar)  # noqa: E731
            if executor == "local":
                result.failed = _run_local(spec, out, todo, advance)
            else:
                result.failed = _run_ray(spec, out, todo, ray_address, advance)
    finalize(spec, out, plans, plan_errors, result)
    return result


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    layout.atomic_write_text(path, text)


def finalize(spec: JobSpec, out: Path, plans: list[ShardPlan], plan_errors: list[dict[str, Any]],
             result: JobResult) -> None:
    manifests = [m for m in (read_shard_manifest(out, p.index) for p in plans) if m]
    errors = list(plan_errors) + [e for m in manifests for e in m["errors"]]
    partials = [read_partial_stats(out, m["index"]) for m in manifests]
    stats = merge_partials(partials).norm_stats() if partials else {"norm_stats": {}}
    result.num_samples = sum(m["num_samples"] for m in manifests)
    result.num_episodes = sum(len(m["episodes"]) for m in manifests)
    result.num_errors = len(errors)
    job = {
        "format_version": motiondata.FORMAT_VERSION, "name": spec.name, "spec": spec.to_dict(),
        "spec_hash": spec.hash(), "software": software_versions(),
        "stages": [{"name": b.stage.name, "config_hash": b.stage.config_hash(),
                    **({"sources": list(b.sources)} if b.sources is not None else {})} for b in job_stages(spec)],
        "shards": [{"shard": m["shard"], "tar": m["tar"], "num_samples": m["num_samples"],
                    "sha256": m["sha256"]} for m in manifests],
        "num_samples": result.num_samples, "num_episodes": result.num_episodes, "num_errors": result.num_errors,
        "complete": len(manifests) == len(plans), "created_by": f"motiondata {motiondata.__version__}",
    }
    problems = check_job_manifest(job)
    if problems:
        raise MotionDataError("job manifest does not match its schema: " + "; ".join(problems))
    _write_if_changed(layout.job_manifest(out), json.dumps(job, indent=2, sort_keys=True) + "\n")
    _write_if_changed(layout.stats_file(out), json.dumps(stats, indent=2, sort_keys=True) + "\n")
    lines = sorted(json.dumps(e, sort_keys=True) for e in errors)
    _write_if_changed(layout.errors_file(out), "".join(line + "\n" for line in lines))
    from motiondata.inspect.report import write_report

    write_report(out)
