"""Incremental stages: when a recipe store's spec changes only by added, removed or changed stages
(parameters or weights) or by its ``samples:`` recipe, rebuild each finished shard from its stored
episode tables instead of from the inputs.

Every stage's output is keyed by its ``config_hash`` plus ``weights`` (a digest of the files its path
parameters name, :func:`stage_keys`); the shard manifest records per stage which tables it produced
(:func:`record_stage_tables`). For a stale shard, :func:`plan_increment` matches the old stages to the
new ones (same parameters, same key, same relative order); per episode, :func:`episode_rerun` then
picks the stages to run again:

- every new or changed stage, and every stage sharing an output prefix with one (``as:``);
- a kept stage whose output tables the new recipe reads at other frames (stages compute only the rows
  a recipe reads, ``item["needs"]``);
- every later stage reading a rerun stage's output (``source:``, ``preflight.READS_FROM``), and the
  producer a rerun reader reads (the VAE's float32 latents are not stored: motion re-derives from them).

The episode is rebuilt from its base tables (``motiondata.pipeline.incremental_shard``), the stored
tables of kept stages seed ``item["tables"]``, the chosen stages run (batched stages over the same
groups as a full build), and the shard is recut and rewritten: episode groups, tar, partial stats, the
manifest last. The result is byte-identical to a full build with the new spec. Windowed stores, and
changes to sources, frames or shards, keep the full rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from motiondata.pipeline.preflight import READS_FROM
from motiondata.pipeline.recipe import FieldRecipe, Recipe
from motiondata.pipeline.spec import PATH_PARAMS, JobSpec

log = logging.getLogger(__name__)

# spec keys that may differ between the old and the new spec of an incremental rebuild
INCREMENTAL_KEYS = ("stages", "samples", "name", "output", "task_cpus")
# shipped stages whose tables do not depend on the frames a recipe reads (they compute whole episodes)
NEEDS_FREE = ("text", "text_tokens", "motion", "motion_tokens", "universal_actions")
WEIGHT_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".bin", ".yaml", ".yml", ".npz", ".pt", ".pth",
                   ".ckpt", ".onnx")
MAX_WEIGHT_FILES = 256


def _file_digests(path: str) -> dict[str, str]:
    """sha256 of a weights file, or of the model files in a folder (two levels), by relative name."""
    from motiondata.encode.keyframes import file_digest

    root = Path(path).expanduser()
    if root.is_file():
        return {root.name: file_digest(root)}
    if not root.is_dir():
        return {}
    files = sorted(p for pattern in ("*", "*/*") for p in root.glob(pattern)
                   if p.is_file() and p.suffix in WEIGHT_SUFFIXES)[:MAX_WEIGHT_FILES]
    return {str(p.relative_to(root)): file_digest(p) for p in files}


def weights_digest(stage: Any) -> str | None:
    """A digest of the files a stage's path parameters (model, tokenizer, config, weights...) name; None
    when it names no local file (a hub id, a package, no model at all)."""
    files = {}
    for param in PATH_PARAMS:
        value = getattr(stage, param, None)
        if isinstance(value, str) and value:
            digests = _file_digests(value)
            if digests:
                files[param] = digests
    if not files:
        return None
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def stage_keys(bound_stages: list[Any]) -> list[dict[str, str]]:
    """The key of each stage's output, in order: name, config_hash and (when it has weight files) weights."""
    entries = []
    for bound in bound_stages:
        entry = {"name": bound.stage.name, "config_hash": bound.stage.config_hash()}
        digest = weights_digest(bound.stage)
        if digest is not None:
            entry["weights"] = digest
        entries.append(entry)
    return entries


def output_of(params: dict[str, Any]) -> str:
    """The table prefix a stage writes (``as:``, else its name)."""
    return str(params.get("as") or params.get("prefix") or params["name"])


def reads_of(params: dict[str, Any]) -> str | None:
    """The prefix of the tables a stage reads from another stage (motion reads vae), if any."""
    if params["name"] in READS_FROM:
        _, param, default = READS_FROM[params["name"]]
        return str(params.get(param) or default)
    source = params.get("source")
    return source if isinstance(source, str) else None


def owns(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def applies(params: dict[str, Any], source: str) -> bool:
    return params.get("sources") is None or source in params["sources"]


def producer(stages: list[dict[str, Any]] | tuple[dict[str, Any], ...], source: str, name: str) -> int | None:
    """Index of the stage that wrote table (or attr) ``name`` of an episode from ``source``: the last
    stage applying to it whose output prefix owns the name (None: a reader's base table)."""
    found = None
    for index, params in enumerate(stages):
        if applies(params, source) and owns(output_of(params), name):
            found = index
    return found


def stage_tables(stages: tuple[dict[str, Any], ...], episodes: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Per stage, the sorted table names it produced over ``episodes`` ((source, table names) pairs)."""
    produced: list[set[str]] = [set() for _ in stages]
    for source, names in episodes:
        for name in names:
            index = producer(stages, source, name)
            if index is not None:
                produced[index].add(name)
    return [sorted(p) for p in produced]


def record_stage_tables(spec: JobSpec, out: str | Path, manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """Add ``tables`` to each ``stages`` entry of a just-built recipe shard's manifest (which tables that
    stage's key produced) and rewrite it atomically; no-op for windowed shards or when already recorded."""
    from motiondata.store.episodes_zarr import episode_attrs
    from motiondata.store.manifest import write_shard_manifest

    entries = (manifest or {}).get("stages")
    if not spec.samples or not isinstance(entries, list) or len(entries) != len(spec.stages):
        return manifest
    episodes = []
    for episode in manifest.get("episodes", []):
        attrs = episode_attrs(out, episode)
        episodes.append((str(attrs.get("source", "")), sorted(attrs.get("tables") or {})))
    tables = stage_tables(spec.stages, episodes)
    updated = [{**entry, "tables": names} for entry, names in zip(entries, tables)]
    if updated == entries:
        return manifest
    manifest = {**manifest, "stages": updated}
    write_shard_manifest(out, manifest["index"], manifest)
    return manifest


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Inverse of ``Recipe.to_dict`` (the ``recipe`` attribute of a stored episode)."""
    fields = tuple(FieldRecipe(**{**f, "offsets": tuple(f["offsets"])}) for f in data["fields"])
    return Recipe(**{**data, "fields": fields, "drop_padded": tuple(data.get("drop_padded") or ())})


@dataclass(frozen=True)
class Increment:
    """How a stale shard's old stages map onto the new spec's (``kept``: new index -> old index)."""

    new: tuple[dict[str, Any], ...]
    old: tuple[dict[str, Any], ...]
    kept: tuple[tuple[int, int], ...]
    plugins: tuple[bool, ...]

    @property
    def kept_map(self) -> dict[int, int]:
        return dict(self.kept)


def _same_key(old: tuple[str, dict[str, Any]], new: tuple[str, dict[str, Any]]) -> bool:
    (old_params, old_entry), (new_params, new_entry) = old, new
    if old_params != new_params or old_entry.get("config_hash") != new_entry.get("config_hash"):
        return False
    weights = old_entry.get("weights"), new_entry.get("weights")
    return None in weights or weights[0] == weights[1]


def match_stages(old: list[tuple[str, dict[str, Any]]], new: list[tuple[str, dict[str, Any]]]
                 ) -> tuple[tuple[int, int], ...]:
    """Longest common subsequence of (params, key) pairs: the stages kept, in the same relative order."""
    rows, cols = len(old), len(new)
    best = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            best[i][j] = best[i + 1][j + 1] + 1 if _same_key(old[i], new[j]) else max(best[i + 1][j], best[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < rows and j < cols:
        if _same_key(old[i], new[j]):
            pairs.append((j, i))
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return tuple(pairs)


def _comparable(spec_dict: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in spec_dict.items() if k not in INCREMENTAL_KEYS}, sort_keys=True, default=str)


def plan_increment(spec: JobSpec, job: dict[str, Any] | None, manifest: dict[str, Any],
                   stages: list[dict[str, str]]) -> Increment | None:
    """How to rebuild a stale shard from its episode tables, or None (with the reason logged) when it
    needs the full rebuild: a windowed spec, another spec than the store's manifest.json records, changed
    sources/frames/shards, error records, or a manifest without stage keys."""
    shard = manifest.get("shard", "?")
    old_spec = (job or {}).get("spec")
    why = None
    if not spec.samples or not isinstance(old_spec, dict) or not old_spec.get("samples"):
        why = "not a recipe store (or no manifest.json of the earlier build)"
    elif job.get("spec_hash") != manifest.get("spec_hash"):
        why = "it was built from another spec than manifest.json records"
    elif _comparable(old_spec) != _comparable(json.loads(json.dumps(spec.to_dict(), default=str))):
        why = "sources, frames or shards changed"
    elif manifest.get("errors") or "inputs" not in manifest:
        why = "it holds error records"
    elif not isinstance(manifest.get("stages"), list) or len(manifest["stages"]) != len(old_spec.get("stages", [])):
        why = "its manifest records no stage keys"
    if why:
        log.info("%s needs a full rebuild: %s", shard, why)
        return None
    canon = [json.dumps(p, sort_keys=True, default=str) for p in old_spec["stages"]]
    old = list(zip(canon, manifest["stages"]))
    new = [(json.dumps(json.loads(json.dumps(p, default=str)), sort_keys=True), e) for p, e in zip(spec.stages, stages)]
    plugins = tuple(":" in p["name"] for p in spec.stages)
    return Increment(tuple(spec.stages), tuple(old_spec["stages"]), match_stages(old, new), plugins)


def _needs_rerun(inc: Increment, j: int, names: list[str], old: tuple[Any, Any], new: tuple[Any, Any]) -> bool:
    """A kept stage whose tables the new recipe reads at other frames than the old one (it computed only those)."""
    (old_anchors, old_needs), (new_anchors, new_needs) = old, new
    params = inc.new[j]
    if params["name"] in NEEDS_FREE or (params["name"] == "vae" and params.get("scope", "episode") == "episode"):
        return False
    if inc.plugins[j]:
        return old_anchors != new_anchors or old_needs != new_needs
    own = [n for n in names if owns(output_of(inc.new[j]), n)]
    return any(old_needs.get(n, old_anchors) != new_needs.get(n, new_anchors) for n in own)


def _close(inc: Increment, applicable: list[int], rerun: set[int], dirty: set[str]) -> None:
    """Grow ``rerun`` to a fixpoint: stages sharing a dirty prefix, readers of rerun stages (later) and the
    producers rerun readers read (earlier: their float32 outputs are not stored)."""
    while True:
        before = (len(rerun), len(dirty))
        dirty |= {output_of(inc.new[j]) for j in rerun}
        rerun |= {j for j in applicable if output_of(inc.new[j]) in dirty}
        for j in applicable:
            reads = reads_of(inc.new[j])
            if reads is None:
                continue
            if j not in rerun and any(r < j and output_of(inc.new[r]) == reads for r in rerun):
                rerun.add(j)
            if j in rerun:
                rerun |= {k for k in applicable if k < j and output_of(inc.new[k]) == reads}
        if (len(rerun), len(dirty)) == before:
            return


def episode_rerun(inc: Increment, source: str, names: list[str], old_recipe: Recipe, new_recipe: Recipe,
                  length: int, fps: float) -> tuple[set[int], set[str]]:
    """For one stored episode: the new stages to run again and the output prefixes whose stored tables
    (and attrs) are dropped first."""
    kept = inc.kept_map
    applicable = [j for j, p in enumerate(inc.new) if applies(p, source)]
    kept_old = set(kept.values())
    rerun = {j for j in applicable if j not in kept}
    dirty = {output_of(p) for i, p in enumerate(inc.old) if applies(p, source) and i not in kept_old}
    old_anchors, new_anchors = old_recipe.anchors(length), new_recipe.anchors(length)
    old = (old_anchors, old_recipe.needs(old_anchors, fps))
    new = (new_anchors, new_recipe.needs(new_anchors, fps))
    rerun |= {j for j in applicable if j not in rerun and _needs_rerun(inc, j, names, old, new)}
    _close(inc, applicable, rerun, dirty)
    return rerun, dirty
