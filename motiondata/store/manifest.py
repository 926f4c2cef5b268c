"""Shard and job manifests, validated against the versioned JSON Schemas in ``schemas/``.

A shard manifest (``OUT/shards/shard-NNNNNN.json``) is written after its tar and marks the shard done:
a resumed job skips every shard for which :func:`shard_done` is true. The job manifest
(``OUT/manifest.json``) is written last: when every shard is done it lists them all, with no gaps in
the numbering (``complete: true``); otherwise it lists those that exist and names the failed ones
(``complete: false``, ``failed_shards``). Above ``INDEX_THRESHOLD`` shards the list is in
``OUT/shards/index.jsonl`` (one JSON line per shard, written before manifest.json) and manifest.json keeps
``shard_index: {path, count, sha256}``; :func:`read_job_manifest` fills ``shards`` back in, so readers see
one format.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
from pathlib import Path
from typing import Any

import jsonschema

import motiondata
from motiondata.errors import StoreError
from motiondata.store.layout import (SHARD_INDEX, SHARDS_DIR, atomic_write_bytes, atomic_write_text, job_manifest,
                                     shard_manifest, shard_name, shard_tar)

log = logging.getLogger(__name__)

SCHEMA_DIR_ENV = "MOTIONDATA_SCHEMAS"
INDEX_THRESHOLD = 1000  # a job manifest with more shards keeps its shard list in shards/index.jsonl
SOFTWARE = ("numpy", "scipy", "torch", "webdataset", "zarr", "numcodecs", "ray", "diffusers", "transformers",
            "tokenizers", "jsonschema", "h5py", "pyarrow", "av", "decord", "opencv-python-headless",
            "sentence-transformers", "safetensors", "mujoco")


def schema_dir() -> Path:
    """``schemas/`` beside the package (a source checkout), or ``$MOTIONDATA_SCHEMAS``."""
    override = os.environ.get(SCHEMA_DIR_ENV)
    return Path(override) if override else Path(motiondata.__file__).resolve().parent.parent / "schemas"


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    path = schema_dir() / f"{name}.schema.json"
    if not path.is_file():
        raise StoreError(f"schema {path} not found; run from a motiondata checkout or set ${SCHEMA_DIR_ENV} "
                         "to the folder holding the *.schema.json files")
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``schemas/<name>.schema.json`` (``sample``, ``episode``, ``shard_manifest``, ``job_manifest``)."""
    return _validator(name).schema


def schema_problems(name: str, document: Any) -> list[str]:
    """Schema violations of ``document``, each as ``'<json path>: <message>'`` (empty when valid)."""
    errors = sorted(_validator(name).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


def _json_text(document: dict[str, Any]) -> str:
    try:
        return json.dumps(document, sort_keys=True, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise StoreError(f"manifest is not plain JSON ({err}); convert numpy values with .tolist()/int()") from err


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{what} {path} is not valid JSON ({err}); delete it to redo that step") from err


def check_shard_manifest(manifest: dict[str, Any]) -> list[str]:
    """Schema plus consistency problems of a shard manifest (keys, samples and counts agree)."""
    problems = schema_problems("shard_manifest", manifest)
    if problems:
        return problems
    keys, samples = manifest["keys"], manifest["samples"]
    if manifest["num_samples"] != len(keys):
        problems.append(f"num_samples {manifest['num_samples']} != {len(keys)} keys")
    if [s["key"] for s in samples] != keys:
        problems.append("samples[].key differs from keys (same keys, same order expected)")
    if manifest["shard"] != shard_name(manifest["index"]):
        problems.append(f"shard {manifest['shard']!r} does not match index {manifest['index']}")
    missing = sorted({s["episode"] for s in samples} - set(manifest["episodes"]))
    if missing:
        problems.append(f"episodes of samples not listed in episodes: {missing[:5]}")
    return problems


def write_shard_manifest(out: str | Path, index: int, manifest: dict[str, Any]) -> Path:
    """Validate and atomically write the manifest of shard ``index``; adds ``format_version`` and fills
    ``shard``/``index``/``tar`` when absent. Write it only after the tar is complete."""
    doc = dict(manifest)
    doc["format_version"] = motiondata.FORMAT_VERSION
    doc.setdefault("shard", shard_name(index))
    doc.setdefault("index", index)
    doc.setdefault("tar", f"{SHARDS_DIR}/{shard_name(index)}.tar")
    if doc["index"] != index or doc["shard"] != shard_name(index):
        raise StoreError(f"manifest says shard {doc['shard']!r} index {doc['index']} but is written as index "
                         f"{index}; pass the same index", shard=shard_name(index))
    problems = check_shard_manifest(doc)
    if problems:
        raise StoreError("invalid shard manifest: " + "; ".join(problems[:10]) +
                         " (fix the manifest or schemas/shard_manifest.schema.json)", shard=shard_name(index))
    path = shard_manifest(out, index)
    atomic_write_text(path, _json_text(doc))
    return path


def read_shard_manifest(out: str | Path, index: int) -> dict[str, Any] | None:
    """The manifest of shard ``index``, or ``None`` when it was not written (the shard is not done)."""
    return _read_json(shard_manifest(out, index), "shard manifest")


def done_manifest(out: str | Path, index: int) -> dict[str, Any] | None:
    """The manifest of shard ``index`` when the shard is done (readable manifest, tar of exactly the listed
    size), else ``None``; one read of the manifest."""
    try:
        manifest = read_shard_manifest(out, index)
    except StoreError as err:
        log.warning("%s; the shard will be redone", err)
        return None
    if not manifest:
        return None
    try:
        return manifest if shard_tar(out, index).stat().st_size == manifest.get("bytes") else None
    except OSError:
        return None


def done_manifests(out: str | Path, indices: list[int]) -> dict[int, dict[str, Any]]:
    """:func:`done_manifest` of each index, the done ones only (a chunk of finalize's parallel read)."""
    return {index: manifest for index in indices if (manifest := done_manifest(out, index))}


def finalize_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """What finalize needs of a shard manifest (job manifest entry, counts, error records, the stored
    episodes' units): a few hundred bytes instead of the per-sample lists, so a run can keep one per shard
    it built or found done and finalize need not read every manifest again."""
    view = {k: manifest[k] for k in ("shard", "index", "tar", "num_samples", "sha256", "bytes", "episodes", "errors")
            if k in manifest}
    stored = set(manifest.get("episodes", []))
    view["inputs"] = [{"unit": i.get("unit"), "episode": i.get("episode")} for i in manifest.get("inputs", [])
                      if isinstance(i, dict) and i.get("episode") in stored]
    return view


def shard_done(out: str | Path, index: int) -> bool:
    """True when shard ``index`` has a readable manifest and a tar of exactly the listed size."""
    return done_manifest(out, index) is not None


def check_job_manifest(manifest: dict[str, Any]) -> list[str]:
    """Schema plus consistency problems of a job manifest: a complete job lists shards 0..N-1 without gaps;
    an incomplete one (``complete: false``) lists the shards that exist, in order, and names the failed ones."""
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    fast = isinstance(shards, list) and _entries_valid(shards)  # 250k entries: jsonschema would take ~9 s
    problems = schema_problems("job_manifest", {**manifest, "shards": []} if fast else manifest)
    if problems or "shards" not in manifest:  # shard list in shards/index.jsonl: read_job_manifest fills it in
        return problems
    index = manifest.get("shard_index")
    if index is not None and index["count"] != len(manifest["shards"]):
        problems.append(f"shard_index.count {index['count']} != {len(manifest['shards'])} shards")
    names = [s["shard"] for s in manifest["shards"]]
    if manifest.get("complete") is False:
        return problems + _incomplete_problems(manifest, names)
    expected = [shard_name(i) for i in range(len(names))]
    if names != expected:
        bad = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
        problems.append(f"shards are not numbered 0..{len(names) - 1} without gaps: entry {bad} is {names[bad]!r}, "
                        f"expected {expected[bad]!r}")
    total = sum(s["num_samples"] for s in manifest["shards"])
    if total != manifest["num_samples"]:
        problems.append(f"num_samples {manifest['num_samples']} != {total}, the sum over shards")
    return problems


@functools.lru_cache(maxsize=None)
def _entry_checks() -> tuple[tuple[str, ...], tuple[tuple[str, str, Any, Any], ...]] | None:
    """The job schema's shard entry rules (required keys; per key type, pattern, minimum) when they use
    nothing else, for :func:`_entries_valid`; ``None`` (always use jsonschema) otherwise."""
    items = load_schema("job_manifest")["properties"]["shards"]["items"]
    props = items.get("properties", {})
    if set(items) - {"type", "required", "properties"} or any(set(p) - {"type", "pattern", "minimum"} or
                                                               p.get("type") not in ("string", "integer")
                                                               for p in props.values()):
        return None
    return tuple(items.get("required", ())), tuple(
        (k, p["type"], re.compile(p["pattern"]) if "pattern" in p else None, p.get("minimum")) for k, p in props.items())


def _entries_valid(entries: list[Any]) -> bool:
    """True only when every shard entry certainly passes the schema (else jsonschema checks and words it)."""
    rules = _entry_checks()
    if rules is None:
        return False
    required, checks = rules
    for entry in entries:
        if not isinstance(entry, dict) or any(k not in entry for k in required):
            return False
        for key, kind, pattern, minimum in checks:
            value = entry.get(key)
            if key not in entry:
                continue
            if kind == "string" and not (isinstance(value, str) and (pattern is None or pattern.search(value))):
                return False
            if kind == "integer" and not (type(value) is int and (minimum is None or value >= minimum)):
                return False
    return True


def _incomplete_problems(manifest: dict[str, Any], names: list[str]) -> list[str]:
    problems = []
    if names != sorted(set(names)):
        problems.append("shards are not listed in order, or one is listed twice")
    failed = [f["shard"] for f in manifest.get("failed_shards", [])]
    overlap = sorted(set(failed) & set(names))
    if overlap:
        problems.append(f"shards listed both as built and as failed: {overlap[:5]}")
    total = sum(s["num_samples"] for s in manifest["shards"])
    if total != manifest["num_samples"]:
        problems.append(f"num_samples {manifest['num_samples']} != {total}, the sum over shards")
    return problems


def write_job_manifest(out: str | Path, manifest: dict[str, Any]) -> Path:
    """Validate and atomically write ``OUT/manifest.json``; adds ``format_version``. A list of more than
    ``INDEX_THRESHOLD`` shards goes to ``shards/index.jsonl`` (:func:`externalize_shards`)."""
    doc = dict(manifest)
    doc["format_version"] = motiondata.FORMAT_VERSION
    doc = externalize_shards(out, doc)
    path = job_manifest(out)
    atomic_write_text(path, _json_text(doc))
    return path


def read_job_manifest(out: str | Path) -> dict[str, Any] | None:
    """``OUT/manifest.json``, or ``None`` when the job has not finished. A manifest whose shard list lives in
    ``shards/index.jsonl`` comes back with ``shards`` filled in from it (its count and sha256 checked)."""
    doc = _read_json(job_manifest(out), "job manifest")
    if isinstance(doc, dict) and "shards" not in doc and isinstance(doc.get("shard_index"), dict):
        path = Path(out) / SHARD_INDEX
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"shard index {path} is missing (manifest.json lists its shards there); rerun "
                             "`motiondata build` with the same --out to rewrite it") from None
        doc["shards"] = index_entries(doc["shard_index"], data, str(path))
    return doc


def index_entries(index: dict[str, Any], data: bytes, where: str) -> list[dict[str, Any]]:
    """The shard entries of a shard index file's bytes, checked against manifest.json's ``shard_index``
    (``count`` lines, ``sha256``): a truncated, edited or foreign index is an error naming the fix."""
    fix = "; rerun `motiondata build` with the same --out to rewrite it"
    digest = hashlib.sha256(data).hexdigest()
    if digest != index.get("sha256"):
        raise StoreError(f"shard index {where}: sha256 {digest[:12]}... differs from manifest.json's "
                         f"{str(index.get('sha256'))[:12]}... (truncated or edited){fix}")
    try:
        entries = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"shard index {where}: not JSON lines ({err}){fix}") from None
    if len(entries) != index.get("count"):
        raise StoreError(f"shard index {where}: {len(entries)} lines, manifest.json says {index.get('count')}{fix}")
    return entries


def externalize_shards(out: str | Path, job: dict[str, Any]) -> dict[str, Any]:
    """``job`` as manifest.json stores it: with more than ``INDEX_THRESHOLD`` shards the list moves to
    ``shards/index.jsonl`` (written here, before manifest.json, only when its content changed) and the
    manifest keeps its path, line count and sha256. Raises ``StoreError`` when ``job`` is inconsistent."""
    job = {k: v for k, v in job.items() if k != "shard_index"}
    problems = check_job_manifest(job)
    if problems:
        raise StoreError("invalid job manifest: " + "; ".join(problems[:10]) +
                         " (fix the manifest or schemas/job_manifest.schema.json)")
    path = Path(out) / SHARD_INDEX
    if len(job["shards"]) <= INDEX_THRESHOLD:
        path.unlink(missing_ok=True)  # a store that shrank: the inline list is the truth
        return job
    data = "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in job["shards"]).encode()
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write_bytes(path, data)
    doc = {k: v for k, v in job.items() if k != "shards"}
    doc["shard_index"] = {"path": SHARD_INDEX, "count": len(job["shards"]), "sha256": hashlib.sha256(data).hexdigest()}
    return doc


def software_versions() -> dict[str, str]:
    """Versions of python, motiondata and of the installed packages among ``SOFTWARE``."""
    versions = {"python": platform.python_version(), "motiondata": motiondata.__version__}
    for dist in SOFTWARE:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
