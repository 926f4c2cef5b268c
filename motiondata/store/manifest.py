"""Shard and job manifests, validated against the versioned JSON Schemas in ``schemas/``.

A shard manifest (``OUT/shards/shard-NNNNNN.json``) is written after its tar and marks the shard done:
a resumed job skips every shard for which :func:`shard_done` is true. The job manifest
(``OUT/manifest.json``) is written last: when every shard is done it lists them all, with no gaps in
the numbering (``complete: true``); otherwise it lists those that exist and names the failed ones
(``complete: false``, ``failed_shards``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import jsonschema

import motiondata
from motiondata.errors import StoreError
from motiondata.store.layout import (SHARDS_DIR, atomic_write_text, job_manifest, shard_manifest, shard_name,
                                     shard_tar)

log = logging.getLogger(__name__)

SCHEMA_DIR_ENV = "MOTIONDATA_SCHEMAS"
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


def shard_done(out: str | Path, index: int) -> bool:
    """True when shard ``index`` has a readable manifest and a tar of exactly the listed size."""
    try:
        manifest = read_shard_manifest(out, index)
    except StoreError as err:
        log.warning("%s; the shard will be redone", err)
        return False
    tar = shard_tar(out, index)
    return bool(manifest) and tar.is_file() and tar.stat().st_size == manifest.get("bytes")


def check_job_manifest(manifest: dict[str, Any]) -> list[str]:
    """Schema plus consistency problems of a job manifest: a complete job lists shards 0..N-1 without gaps;
    an incomplete one (``complete: false``) lists the shards that exist, in order, and names the failed ones."""
    problems = schema_problems("job_manifest", manifest)
    if problems:
        return problems
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
    """Validate and atomically write ``OUT/manifest.json``; adds ``format_version``."""
    doc = dict(manifest)
    doc["format_version"] = motiondata.FORMAT_VERSION
    problems = check_job_manifest(doc)
    if problems:
        raise StoreError("invalid job manifest: " + "; ".join(problems[:10]) +
                         " (fix the manifest or schemas/job_manifest.schema.json)")
    path = job_manifest(out)
    atomic_write_text(path, _json_text(doc))
    return path


def read_job_manifest(out: str | Path) -> dict[str, Any] | None:
    """``OUT/manifest.json``, or ``None`` when the job has not finished."""
    return _read_json(job_manifest(out), "job manifest")


def software_versions() -> dict[str, str]:
    """Versions of python, motiondata and of the installed packages among ``SOFTWARE``."""
    versions = {"python": platform.python_version(), "motiondata": motiondata.__version__}
    for dist in SOFTWARE:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
