"""Re-cut a store with another sample recipe, without re-encoding anything.

    motiondata reshard out/demo --recipe pipelines/lamo.yaml --out out/demo-lamo

The new store keeps the old one's shard grouping, episode tables (``episodes.zarr`` hard-linked, or
copied across file systems), stats and error records; only the shards and manifests are new. It needs a
store built from a recipe (episode tables); a windowed store must be rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from motiondata.errors import MotionDataError, StoreError
from motiondata.loader.recipe_dataset import resolve_recipe
from motiondata.pipeline.recipe import Recipe, cut_samples
from motiondata.pipeline.table_build import info_from_attrs, load_tables
from motiondata.store import layout
from motiondata.store.episodes_zarr import list_episodes
from motiondata.store.manifest import externalize_shards, read_job_manifest, read_shard_manifest, write_shard_manifest
from motiondata.store.shards import write_shard

log = logging.getLogger(__name__)


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def _samples(store: Path, recipe: Recipe, episodes: list[str], records: list[dict]) -> Iterator[dict[str, Any]]:
    for episode in episodes:
        tables, attrs = load_tables(store, episode, recipe.tables(), strict=False)
        for sample in cut_samples(recipe, tables, info_from_attrs(episode, attrs)):
            records.append({"key": sample["__key__"], "episode": episode, "window": sample["meta"]["anchor"],
                            "status": "ok"})
            yield sample


def _spec_hash(spec: dict[str, Any]) -> str:
    content = {k: v for k, v in spec.items() if k not in ("output", "task_cpus")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _reshard_one(store: Path, out: Path, old: dict[str, Any], recipe: Recipe, spec_hash: str) -> dict[str, Any]:
    index, records = int(old["index"]), []
    info = write_shard(layout.shard_tar(out, index), _samples(store, recipe, list(old["episodes"]), records))
    for record, written in zip(records, info["samples"]):
        record.update(bytes=written["bytes"], sha256=written["sha256"])
    for where in (layout.shard_stats, layout.shard_stats_json):  # binary partial, or an older store's JSON
        if where(store, index).is_file():
            shutil.copy2(where(store, index), where(out, index))
            break
    manifest = {**old, "sha256": info["sha256"], "bytes": info["bytes"], "num_samples": info["num_samples"],
                "keys": [s["key"] for s in info["samples"]], "samples": records, "fields": info["fields"],
                "spec_hash": spec_hash, **({"members": info["members"]} if "members" in info else {})}
    manifest.pop("format_version", None)
    write_shard_manifest(out, index, manifest)
    return manifest


def reshard(store: str | Path, recipe: Any, out: str | Path) -> dict[str, Any]:
    """Write ``out`` from ``store``'s episode tables with ``recipe``; returns the new job manifest."""
    store, out = Path(store).resolve(), Path(out).resolve()
    job_path = layout.job_manifest(store)
    if not job_path.is_file():
        raise StoreError(f"{store} has no manifest.json; pass a finished motiondata store")
    if out.exists() and any(out.iterdir()):
        raise MotionDataError(f"--out {out} is not empty; reshard into a new folder")
    job = read_job_manifest(store)  # shards filled in from shards/index.jsonl in a large store
    episodes = list_episodes(store)
    recipe = resolve_recipe(recipe, store, episodes)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write(store, out, job, recipe)
    except BaseException:
        shutil.rmtree(out) if created else None  # a failed reshard leaves nothing behind
        raise


def _write(store: Path, out: Path, job: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    _link_tree(layout.zarr_store(store), layout.zarr_store(out))
    spec = {**job["spec"], "samples": _recipe_block(recipe)}
    spec_hash = _spec_hash(spec)
    shards = []
    for entry in job["shards"]:
        index = int(entry["shard"].rsplit("-", 1)[1])
        old = read_shard_manifest(store, index)
        if old is None:
            raise StoreError(f"{store}: shard manifest of {entry['shard']} is missing; validate the store first")
        shards.append(_reshard_one(store, out, old, recipe, spec_hash))
    for name in (layout.STATS, layout.ERRORS):
        if (store / name).is_file():
            shutil.copy2(store / name, out / name)
    new_job = {**job, "spec": spec, "spec_hash": spec_hash, "resharded_from": str(store),
               "shards": [{"shard": m["shard"], "tar": m["tar"], "num_samples": m["num_samples"],
                           "sha256": m["sha256"]} for m in shards],
               "num_samples": sum(m["num_samples"] for m in shards)}
    new_job = externalize_shards(out, new_job)
    layout.atomic_write_text(layout.job_manifest(out), json.dumps(new_job, indent=2, sort_keys=True) + "\n")
    from motiondata.inspect.report import write_report

    write_report(out)
    log.info("resharded %s -> %s: %d samples", store, out, new_job["num_samples"])
    return new_job


def _recipe_block(recipe: Recipe) -> dict[str, Any]:
    """A Recipe back to the spec's ``samples:`` form."""
    return {"stride": recipe.stride, "start": recipe.start, "unit": recipe.unit,
            "images": {"format": recipe.image_format, "quality": recipe.image_quality},
            "depth": {"format": recipe.depth_format}, "drop_padded": list(recipe.drop_padded),
            "fields": {f.name: {"from": f.source, "offsets": list(f.offsets), "index": f.index,
                                  "optional": f.optional}
                       for f in recipe.fields}}
