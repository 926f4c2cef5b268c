"""Read a store's shards for the streaming loader: resolve shard lists (manifest, glob, URLs via fsspec),
stream tar members, decode only requested fields, and report corrupt data with shard and key."""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import os
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import fsspec
import numpy as np

from motiondata.errors import StoreError
from motiondata.store import layout
from motiondata.store.sample_codec import decode_value, split_member

log = logging.getLogger(__name__)
POLICIES = ("skip", "raise")
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
NPY_MAGIC = b"\x93NUMPY"
_WARNED: set[tuple] = set()


@dataclass(frozen=True)
class ShardInfo:
    url: str
    name: str
    num_samples: int


# ----------------------------------------------------------------------------- shard list

def _local_path(url: str) -> str | None:
    protocol, path = fsspec.core.split_protocol(url)
    return path if protocol in (None, "file", "local") else None


def _join(root: str, name: str) -> str:
    if fsspec.core.split_protocol(name)[0] or name.startswith("/"):
        return name
    return root.rstrip("/") + "/" + name


def _read_json(url: str) -> dict | None:
    try:
        with fsspec.open(url, "rt") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _count_samples(url: str) -> int:
    log.info("%s has no shard manifest; counting its samples from the tar headers", url)
    keys: set[str] = set()
    with _open_tar(url) as tf:
        for member in tf:
            keys.add(split_member(member.name.lstrip("./"))[0])
    return len(keys)


def _shard_from_url(url: str) -> ShardInfo:
    name = url.rstrip("/").rsplit("/", 1)[-1].split(".tar")[0]
    sidecar = _read_json(url[: -len(".tar")] + ".json") if url.endswith(".tar") else None
    count = sidecar["num_samples"] if sidecar and "num_samples" in sidecar else _count_samples(url)
    return ShardInfo(url, name, int(count))


def _shards_from_manifest(root: str, manifest: dict) -> list[ShardInfo]:
    return [ShardInfo(_join(root, e["tar"]), e["shard"], int(e["num_samples"])) for e in manifest["shards"]]


def resolve_shards(source: str | os.PathLike | Sequence[str]) -> list[ShardInfo]:
    """Shards of a store directory/URL (via its manifest), a glob of tar URLs, or a list of tar URLs."""
    if isinstance(source, (list, tuple)):
        return [_shard_from_url(str(u)) for u in source]
    text = str(source)
    if any(c in text for c in "*?["):
        fs, _, paths = fsspec.core.get_fs_token_paths(text)
        urls = [p if _local_path(text) is not None else fs.unstrip_protocol(p) for p in sorted(paths)]
        if not urls:
            raise StoreError(f"no shard matches {text!r}; Fix: check the glob (e.g. 'OUT/shards/shard-*.tar')")
        return [_shard_from_url(u) for u in urls]
    if text.endswith(".tar"):
        return [_shard_from_url(text)]
    manifest = _read_json(_join(text, layout.JOB_MANIFEST))
    if manifest and manifest.get("shards"):
        return _shards_from_manifest(text, manifest)
    if _local_path(text) is not None and os.path.isdir(os.path.join(text, layout.SHARDS_DIR)):
        log.warning("%s has no %s yet (job unfinished?): streaming the shards present", text, layout.JOB_MANIFEST)
        return resolve_shards(_join(text, f"{layout.SHARDS_DIR}/shard-*.tar"))
    raise StoreError(f"{text!r} has no {layout.JOB_MANIFEST} listing shards; Fix: build the store with "
                     "`motiondata build`, or pass a glob / list of shard tar URLs")


# ----------------------------------------------------------------------------- reading one shard

@contextmanager
def _open_tar(url: str) -> Iterator[tarfile.TarFile]:
    path = _local_path(url)
    if path is not None:  # seekable: members we do not want are skipped without reading them
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tf:
            yield tf
    else:  # any fsspec URL, read once front to back
        with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            yield tf


@functools.lru_cache(maxsize=512)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    fmt = ast.literal_eval(header.decode("latin1"))  # what np.load does, once per distinct header
    dtype = np.dtype(fmt["descr"])
    if dtype.hasobject:
        raise ValueError("object arrays would need pickle, which motiondata never reads")
    return dtype, tuple(fmt["shape"]), bool(fmt["fortran_order"])


def decode_member(ext: str, data: bytes) -> Any:
    """``sample_codec.decode_value`` with a fast path for ``.npy``: headers repeat from sample to sample,
    so each distinct header is parsed once (np.load re-parses it every time: a third of the load time)."""
    if ext != "npy" or data[:6] != NPY_MAGIC or data[6] not in (1, 2, 3):
        return decode_value(ext, data)
    size = 2 if data[6] == 1 else 4
    start = 8 + size + int.from_bytes(data[8:8 + size], "little")
    dtype, shape, fortran = _npy_header(data[8 + size:start])
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def _corrupt(policy: str, shard: ShardInfo, key: str | None, problem: str) -> None:
    fix = "rebuild this shard (delete it and its .json, then rerun `motiondata build`)"
    if policy == "raise":
        raise StoreError(f"{problem}. Fix: {fix}, or load with on_corrupt='skip'", shard=shard.name, key=key)
    seen = (shard.url, key, problem)  # warn once per process; later epochs repeat it at debug level
    level = logging.DEBUG if seen in _WARNED else logging.WARNING
    _WARNED.add(seen)
    log.log(level, "skipping corrupt data: %s", StoreError(f"{problem}. Fix: {fix}", shard=shard.name, key=key))


def _ended_cleanly(tf: tarfile.TarFile, shard: ShardInfo, index: int) -> bool:
    """tarfile stops silently at a bad header or a cut file: a complete shard has every sample its
    manifest counts and (when seekable) ends in the two zero blocks of a tar."""
    if index + 1 < shard.num_samples:
        return False
    if _local_path(shard.url) is None:
        return True  # streamed once: the sample count is the check
    tf.fileobj.seek(tf.offset)
    tail = tf.fileobj.read(END_OF_ARCHIVE)
    return len(tail) == END_OF_ARCHIVE and not tail.strip(b"\0")


def read_shard(shard: ShardInfo, wanted: dict[int, Any], fields: set[str] | None = None,
               on_corrupt: str = "skip") -> Iterator[tuple[Any, dict | None]]:
    """Yield ``(tag, sample)`` for the samples whose index in the shard is in ``wanted`` (index -> tag),
    decoding only ``fields``. A corrupt sample (and, on a cut or damaged tar, the sample being read and
    all after it) yields ``(tag, None)`` under ``on_corrupt="skip"`` and raises under ``"raise"``."""
    if not wanted:
        return
    last, index, key, sample, done, clean = max(wanted), -1, None, None, set(), False
    try:
        with _open_tar(shard.url) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                k, fld, ext = split_member(member.name.lstrip("./"))
                if k != key:
                    if index in wanted:
                        done.add(index)
                        yield wanted[index], sample
                    index, key = index + 1, k
                    if index > last:
                        return
                    sample = {"__key__": k} if index in wanted else None
                if sample is None or (fields is not None and fld not in fields):
                    continue
                try:
                    sample[fld] = decode_member(ext, tf.extractfile(member).read())
                except (ValueError, OSError, EOFError, StoreError, tarfile.TarError) as exc:
                    _corrupt(on_corrupt, shard, k, f"field {fld!r} cannot be decoded ({exc})")
                    sample = None
            clean = _ended_cleanly(tf, shard, index)
        if not clean:
            _corrupt(on_corrupt, shard, key, f"the tar stops inside sample {index + 1} of {shard.num_samples} "
                     "(truncated file or damaged tar header)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        _corrupt(on_corrupt, shard, key, f"tar unreadable in sample {index + 1} ({type(exc).__name__}: {exc})")
    if clean and index in wanted and index not in done:
        done.add(index)
        yield wanted[index], sample
    for i in sorted(set(wanted) - done):
        yield wanted[i], None


def available_fields(source: Any) -> list[str]:
    """Field names of a store's first sample, from its tar member names (nothing is decoded)."""
    shard = next((s for s in resolve_shards(source) if s.num_samples > 0), None)
    if shard is None:
        raise StoreError(f"{source!r} holds no samples; Fix: check the build's errors.jsonl")
    names: set[str] = set()
    first = None
    with _open_tar(shard.url) as tf:
        for member in tf:
            key, fld, _ = split_member(member.name.lstrip("./"))
            if first is not None and key != first:
                break
            first = key
            names.add(fld)
    return sorted(names)


