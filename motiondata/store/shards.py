"""WebDataset shards: deterministic, atomic tar writing and strict reading.

A shard is a plain POSIX tar (PAX format) whose members are ``{key}.{field}.{ext}`` as built by
:func:`motiondata.store.sample_codec.sample_members`: the members of one sample are adjacent, fields in
sorted order, ``.npy`` (never pickled) or ``.json``. Every header is fixed (mtime 0, uid/gid 0, empty
user/group names, mode 0o644), so the same samples always give the same bytes and the same sha256.

``write_shard`` streams: it holds one sample's encoded members at a time, hashes while writing, and
writes to a temporary name beside the final path that it renames only when the tar is complete, so a
crash never leaves a half-written shard under the final name.

``iter_shard`` reads with the standard ``tarfile`` module and fails loudly (``StoreError`` naming the
shard and the key) on a truncated or corrupt tar, where ``tarfile`` alone would silently stop early. It
reads plain tars only (a gzip/bzip2/xz/zstd file is refused, never decompressed), refuses member names
that are absolute or climb out with ``..``, and decodes ``.npy`` members with
:func:`motiondata.store.npy_member.load_npy`, which checks a header against the bytes it describes before
allocating anything.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from motiondata.errors import StoreError
from motiondata.store.layout import atomic_path
from motiondata.store.manifest import schema_problems
from motiondata.store.npy_member import decode_member, member_name_problem, refuse_compressed
from motiondata.store.sample_codec import sample_members, split_member

log = logging.getLogger(__name__)
_SKIP = object()  # stands for a member whose field was not asked for

TAR_FORMAT = tarfile.PAX_FORMAT
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks close every tar


class _HashingWriter:
    """File wrapper that hashes and counts every byte tarfile writes."""

    def __init__(self, raw: Any):
        self.raw, self.sha, self.count = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.sha.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self.raw.flush()


def member_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with every varying attribute fixed, for byte-identical shards."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def describe_value(value: Any, json_value: bool = False) -> dict[str, Any]:
    """``{"dtype", "shape"}`` for an array, ``{"json": True}`` (or the value itself) for JSON."""
    if isinstance(value, np.ndarray):
        return {"dtype": value.dtype.name, "shape": [int(s) for s in value.shape]}
    return {"json": value if json_value else True}


def describe_sample(sample: dict[str, Any], json_values: bool = False) -> dict[str, Any]:
    """Field descriptions of one sample (the document ``schemas/sample.schema.json`` validates)."""
    return {name: describe_value(value, json_values) for name, value in sample.items() if not name.startswith("__")}


def merge_field_info(summary: dict[str, dict], fields: dict[str, dict]) -> dict[str, dict]:
    """Fold one sample's field descriptions into a shard-level summary: shapes become ``null`` on axes
    that vary between samples; a field whose dtype or kind changes raises."""
    for name, info in fields.items():
        seen = summary.get(name)
        if seen is None:
            summary[name] = {k: (list(v) if isinstance(v, list) else v) for k, v in info.items()}
            continue
        if ("json" in seen) != ("json" in info) or seen.get("dtype") != info.get("dtype"):
            raise StoreError(f"field {name!r} changes type between samples ({seen} vs {info}); "
                             "every sample of a shard must store a field with one dtype")
        if "shape" in seen:
            if len(seen["shape"]) != len(info["shape"]):
                raise StoreError(f"field {name!r} changes rank between samples ({seen['shape']} vs "
                                 f"{info['shape']}); keep the number of axes fixed")
            seen["shape"] = [a if a == b else None for a, b in zip(seen["shape"], info["shape"])]
    return summary


def check_sample(sample: dict[str, Any], shard: str | None = None) -> None:
    """Raise ``StoreError`` naming the key when ``sample`` breaks ``schemas/sample.schema.json``."""
    problems = schema_problems("sample", {"__key__": sample.get("__key__"), **describe_sample(sample, json_values=True)})
    if problems:
        raise StoreError("sample breaks schemas/sample.schema.json: " + "; ".join(problems[:5]) +
                         " (fix the stage that writes this field, or the schema)", shard=shard, key=sample.get("__key__"))


def _write_sample(tar: tarfile.TarFile, sample: dict[str, Any], seen: set[str], shard: str, check: bool) -> dict:
    key = sample.get("__key__")
    if not isinstance(key, str) or not key:
        raise StoreError("sample has no '__key__' string; give every sample a unique key", shard=shard)
    if key in seen:
        raise StoreError("duplicate key in one shard; keys must be unique (episode id + window index)",
                         shard=shard, key=key)
    seen.add(key)
    try:
        members = sample_members(sample)
    except StoreError as err:
        raise StoreError(str(err), shard=shard, key=key) from err
    if not members:
        raise StoreError("sample has no fields; a sample needs at least 'meta'", shard=shard, key=key)
    if check:
        check_sample(sample, shard)
    nbytes, offsets = 0, []
    for name, data in members:
        tar.addfile(member_info(name, len(data)), io.BytesIO(data))
        nbytes += len(data)  # tar.offset is now past the data, padded to whole blocks
        offsets.append([name[len(key) + 1:], tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE,
                        len(data)])
    return {"key": key, "fields": describe_sample(sample), "bytes": nbytes, "sha256": sample_digest(members),
            "members": offsets}


def write_shard(path: str | Path, samples: Iterable[dict[str, Any]], check_samples: bool = True) -> dict[str, Any]:
    """Write ``samples`` (an iterable, consumed once) as a deterministic WebDataset tar at ``path``.
    With ``check_samples`` every sample is validated against ``schemas/sample.schema.json`` first
    (about 1 ms per sample), so a stage breaking the field contract fails the shard, naming the key.

    Returns ``{"sha256", "bytes", "num_samples", "samples": [{"key", "fields", "bytes", "sha256"}], "fields",
    "members"}``: ``members`` (per sample, in tar order) lists ``[field.ext, data offset, size]`` of its
    members, the offset index the loader reads by (copy it into the shard manifest as ``members``);
    per-sample ``bytes`` is the payload size of its members (headers excluded) and ``sha256`` their
    :func:`sample_digest` (copy both into the shard manifest's samples so ``validate_store`` can name a
    corrupted sample); ``fields`` is the shard summary from :func:`merge_field_info`.
    """
    path = Path(path)
    shard = path.stem
    infos: list[dict] = []
    summary: dict[str, dict] = {}
    seen: set[str] = set()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w", format=TAR_FORMAT) as tar:  # type: ignore[call-overload]
                for sample in samples:
                    info = _write_sample(tar, sample, seen, shard, check_samples)
                    merge_field_info(summary, info["fields"])
                    infos.append(info)
    log.debug("wrote %s: %d samples, %d bytes", path, len(infos), writer.count)
    members = [info.pop("members") for info in infos]
    return {"sha256": writer.sha.hexdigest(), "bytes": writer.count, "num_samples": len(infos),
            "samples": infos, "fields": summary, "members": members}


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            sha.update(chunk)
    return sha.hexdigest()


def _check_end(tar: tarfile.TarFile, raw: Any, shard: str, last_key: str | None) -> None:
    """tarfile stops silently at a bad header or at EOF between members; a complete shard ends in zero
    blocks, so anything else after the last member means truncation or corruption."""
    raw.seek(tar.offset)
    size, corrupt = 0, False
    while block := raw.read(1 << 20):
        size += len(block)
        if block.strip(b"\0"):
            corrupt = True
            break
    if corrupt or size < END_OF_ARCHIVE:
        what = "corrupt tar header" if corrupt else "truncated (no end-of-archive marker)"
        raise StoreError(f"{what} after this sample at byte {tar.offset}; rewrite the shard "
                         "(delete it and its .json manifest, then resume the job)", shard=shard, key=last_key)


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, shard: str, key: str, file_size: int) -> bytes:
    if not info.isfile():
        raise StoreError(f"member {info.name!r} is not a regular file; shards hold only files",
                         shard=shard, key=key)
    if info.offset_data + info.size > file_size:  # never ask read() for more than the file holds
        raise StoreError(f"member {info.name!r} declares {info.size} bytes, past the end of the file (truncated "
                         "or corrupt); rewrite the shard", shard=shard, key=key)
    fobj = tar.extractfile(info)
    assert fobj is not None
    return fobj.read()


def _member_parts(info: tarfile.TarInfo, shard: str, key: str | None) -> tuple[str, str, str]:
    problem = member_name_problem(info.name)
    if problem is not None:
        raise StoreError(f"{problem}; the shard is corrupt or crafted: rewrite it", shard=shard, key=key)
    return split_member(info.name.removeprefix("./"))


def iter_members(path: str | Path) -> Iterator[tuple[str, str, str, bytes]]:
    """Yield ``(key, field, ext, raw bytes)`` for every member, in tar order, checking the tar's end.
    Raises ``StoreError(shard=..., key=...)`` on a truncated, corrupt or compressed tar and on member
    names that are absolute, hold ``..`` or a ``/``, or are not ``<key>.<field>.<ext>``."""
    path = Path(path)
    shard, key = path.stem, None
    try:
        with open(path, "rb") as raw:
            refuse_compressed(raw.read(8), shard)
            raw.seek(0)
            size = os.fstat(raw.fileno()).st_size
            with tarfile.open(fileobj=raw, mode="r:") as tar:
                for info in tar:
                    key, name, ext = _member_parts(info, shard, key)
                    yield key, name, ext, _read_member(tar, info, shard, key, size)
                _check_end(tar, raw, shard, key)
    except StoreError as err:
        if err.shard is None:
            raise StoreError(str(err), shard=shard, key=key) from err
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError, MemoryError) as err:
        raise StoreError(f"unreadable member ({type(err).__name__}: {err}); the shard is truncated or "
                         "corrupt: rewrite it", shard=shard, key=key) from err


def _decoded(path: Path, fields: set[str] | None) -> Iterator[tuple[str, str, Any]]:
    shard = path.stem
    for key, name, ext, data in iter_members(path):
        if fields is not None and name not in fields:
            yield key, name, _SKIP
            continue
        try:
            yield key, name, decode_member(ext, data)
        except (ValueError, StoreError) as err:
            raise StoreError(f"field {name!r} cannot be decoded ({err}); the shard is corrupt: rewrite it",
                             shard=shard, key=key) from err


def sample_digest(members: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over one sample's member names and payloads (stored per sample in shard manifests)."""
    sha = hashlib.sha256()
    for name, data in members:
        sha.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        sha.update(data)
    return sha.hexdigest()


def iter_shard(path: str | Path, fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the samples of one shard as ``{"__key__": key, field: value}`` dicts, in order.

    ``fields`` restricts the decoded fields (members of other fields are still read and checked).
    Raises ``StoreError(shard=..., key=...)`` on a missing, truncated or corrupt shard, on members of
    one sample that are not adjacent, and on undecodable members.
    """
    path = Path(path)
    shard = path.stem
    if not path.is_file():
        raise StoreError(f"shard file {path} does not exist", shard=shard)
    wanted = set(fields) if fields is not None else None
    current: dict[str, Any] | None = None
    done: set[str] = set()
    for key, name, value in _decoded(path, wanted):
        if current is None or current["__key__"] != key:
            if current is not None:
                done.add(current["__key__"])
                yield current
            if key in done:
                raise StoreError("members of this sample are not adjacent in the tar", shard=shard, key=key)
            current = {"__key__": key}
        if value is not _SKIP:
            current[name] = value
    if current is not None:
        yield current
