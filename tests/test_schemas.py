import json

import jsonschema
import numpy as np
import pytest

import motiondata
from motiondata.errors import StoreError
from motiondata.store.episodes_zarr import episode_attrs, list_episodes
from motiondata.store.errors_log import error_record, read_errors
from motiondata.store.layout import shard_manifest, shard_tar
from motiondata.store.manifest import (load_schema, read_job_manifest, read_shard_manifest, schema_dir,
                                       schema_problems, shard_done, write_job_manifest, write_shard_manifest)
from motiondata.store.shards import describe_sample, iter_shard, write_shard

try:
    from tests.factories_store import build_store, make_sample, shard_manifest_for
except ImportError:  # tests/ is not a package
    from factories_store import build_store, make_sample, shard_manifest_for

SCHEMAS = ("sample", "episode", "shard_manifest", "job_manifest")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    build_store(out, shards=2, episodes_per_shard=1, windows=2)
    return out


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_valid_and_versioned(name):
    path = schema_dir() / f"{name}.schema.json"
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f":{name}:{motiondata.FORMAT_VERSION}")
    assert schema["format_version"] == motiondata.FORMAT_VERSION


def test_manifest_format_version_consts_match_the_package():
    for name in ("shard_manifest", "job_manifest"):
        assert load_schema(name)["properties"]["format_version"] == {"const": motiondata.FORMAT_VERSION}
    props = load_schema("episode")["properties"]["motiondata"]["properties"]
    assert props["format_version"] == {"const": motiondata.FORMAT_VERSION}


def test_written_manifests_validate_and_are_fully_described(store):
    job = read_job_manifest(store)
    assert schema_problems("job_manifest", job) == []
    job_schema = load_schema("job_manifest")
    assert set(job_schema["required"]) <= set(job) <= set(job_schema["properties"])  # optional: failed_shards...
    shard_schema = load_schema("shard_manifest")
    for index in range(len(job["shards"])):
        manifest = read_shard_manifest(store, index)
        assert schema_problems("shard_manifest", manifest) == []
        assert set(shard_schema["required"]) <= set(manifest) <= set(shard_schema["properties"])
        item_props = shard_schema["properties"]["samples"]["items"]["properties"]
        assert all(set(s) <= set(item_props) for s in manifest["samples"])
        assert shard_done(store, index)


def test_write_shard_output_matches_manifest_schema(tmp_path):
    info = write_shard(tmp_path / "shard-000000.tar", [make_sample("e", w) for w in range(3)])
    props = load_schema("shard_manifest")["properties"]
    item_props = props["samples"]["items"]["properties"]
    assert {k for k in info["samples"][0] if k != "fields"} <= set(item_props)
    assert {"sha256", "bytes", "num_samples", "fields"} <= set(props)
    assert schema_problems("shard_manifest", {**shard_manifest_for(0, info, []), "format_version": "1.0",
                                              "keys": [], "samples": [], "num_samples": 0}) == []
    assert info["fields"]["fast.tokens"] == {"dtype": "int32", "shape": [None]}


def test_stored_samples_validate(store):
    for sample in iter_shard(shard_tar(store, 0)):
        assert schema_problems("sample", {"__key__": sample["__key__"], **describe_sample(sample, True)}) == []


def test_error_records_match_the_schema(store):
    schema_keys = set(load_schema("shard_manifest")["$defs"]["error_record"]["properties"])
    assert set(error_record("f", "e", "s", "r", unit="u")) == schema_keys
    for rec in read_errors(store) + read_shard_manifest(store, 0)["errors"]:
        assert set(rec) == schema_keys


def test_episode_attrs_validate_and_are_described(store):
    props = load_schema("episode")["properties"]["motiondata"]["properties"]
    for eid in list_episodes(store):
        attrs = episode_attrs(store, eid)
        assert schema_problems("episode", attrs) == []
        assert set(attrs["motiondata"]) == set(props)


@pytest.mark.parametrize("doc, where", [
    ({"__key__": "k", "meta": {"json": {"episode": "e", "window": 0, "start": 0}}}, "length"),
    ({"__key__": "k", "meta": {"json": {"episode": "e", "window": 0, "start": 0, "length": 1}},
      "vae.latents": {"dtype": "float32", "shape": [1, 2, 3, 4]}}, "float16"),
    ({"__key__": "k", "meta": {"json": {"episode": "e", "window": 0, "start": 0, "length": 1}},
      "flow.tracks": {"dtype": "float16", "shape": [400, 32, 2]}}, "3"),
    ({"__key__": "k", "meta": {"json": {"episode": "e", "window": 0, "start": 0, "length": 1}},
      "Bad Name": {"json": 1}}, "Bad Name"),
])
def test_sample_schema_rejects_contract_breaks(doc, where):
    problems = schema_problems("sample", doc)
    assert problems and any(where in p for p in problems), problems


def test_writers_refuse_invalid_manifests(tmp_path):
    info = write_shard(shard_tar(tmp_path, 0), [make_sample("e", 0)])
    doc = shard_manifest_for(0, info, [make_sample("e", 0)])
    with pytest.raises(StoreError, match="spec_hash"):
        write_shard_manifest(tmp_path, 0, {k: v for k, v in doc.items() if k != "spec_hash"})
    with pytest.raises(StoreError, match="index"):
        write_shard_manifest(tmp_path, 3, doc)
    with pytest.raises(StoreError, match="num_samples"):
        write_shard_manifest(tmp_path, 0, {**doc, "num_samples": 5})
    with pytest.raises(StoreError, match="plain JSON"):
        write_shard_manifest(tmp_path, 0, {**doc, "extra": np.float32(1)})
    assert not shard_manifest(tmp_path, 0).exists() and not shard_done(tmp_path, 0)
    entry = {"shard": "shard-000001", "tar": "shards/shard-000001.tar", "num_samples": 1, "sha256": info["sha256"]}
    job = {"name": "j", "spec": {}, "spec_hash": "h", "software": {}, "stages": [], "shards": [entry],
           "num_samples": 1, "num_episodes": 1, "num_errors": 0, "created_by": "test"}
    with pytest.raises(StoreError, match="gaps"):
        write_job_manifest(tmp_path, job)
    with pytest.raises(StoreError, match="sum"):
        write_job_manifest(tmp_path, {**job, "shards": [{**entry, "shard": "shard-000000"}], "num_samples": 2})
    write_job_manifest(tmp_path, {**job, "shards": [{**entry, "shard": "shard-000000"}]})
    assert read_job_manifest(tmp_path)["format_version"] == motiondata.FORMAT_VERSION


def test_shard_done_needs_matching_tar_size(tmp_path):
    samples = [make_sample("e", 0)]
    info = write_shard(shard_tar(tmp_path, 0), samples)
    assert not shard_done(tmp_path, 0)  # tar without manifest: not done
    write_shard_manifest(tmp_path, 0, shard_manifest_for(0, info, samples))
    assert shard_done(tmp_path, 0)
    shard_tar(tmp_path, 0).write_bytes(shard_tar(tmp_path, 0).read_bytes()[:-512])
    assert not shard_done(tmp_path, 0)
    shard_manifest(tmp_path, 0).write_text("{broken")
    assert not shard_done(tmp_path, 0)


def test_software_versions_lists_installed_packages():
    from motiondata.store.manifest import software_versions

    versions = software_versions()
    assert versions["motiondata"] == motiondata.__version__
    assert {"python", "numpy", "zarr", "webdataset"} <= set(versions)
    assert all(isinstance(v, str) for v in versions.values())
