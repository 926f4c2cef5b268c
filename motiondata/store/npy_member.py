"""Strict, allocation-safe reading of ``.npy`` tar members, and checks of tar files and member names.

``np.load`` trusts the header: given a ``BytesIO`` it allocates ``prod(shape) * itemsize`` bytes before it
reads a byte of data, so a 200-byte member declaring a 5 TiB shape costs a ``MemoryError`` (or worse),
and a header that is not a dict, has a string shape or is nested a thousand levels deep raises whatever
``ast``/``numpy`` raise. Here the header is parsed once, checked field by field, and the declared size is
compared with the bytes the member really holds *before* anything is allocated; every problem is a
``StoreError`` (corrupt data, never a crash). Arrays come from ``np.frombuffer`` over the member's bytes.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from typing import Any, NamedTuple

import numpy as np

from motiondata.errors import StoreError
from motiondata.store.sample_codec import decode_value

NPY_MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000  # numpy's own limit for headers it reads without allow_pickle
HEADER_KEYS = {"descr", "fortran_order", "shape"}
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
              b"\x04\x22\x4d\x18": "lz4"}


class NpyHeader(NamedTuple):
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    offset: int  # first data byte

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _bad(problem: str) -> StoreError:
    return StoreError(f"malformed .npy member: {problem}; the shard is corrupt: rebuild it")


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise _bad(f"header is not a Python literal ({type(err).__name__})") from None


@functools.lru_cache(maxsize=512)
def _parse_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """dtype, shape, order and data size of one header dict (cached: headers repeat between samples)."""
    fmt = _literal(header.decode("latin1"))
    if not isinstance(fmt, dict) or set(fmt) != HEADER_KEYS:
        keys = sorted(map(str, fmt)) if isinstance(fmt, dict) else type(fmt).__name__
        raise _bad(f"header must be a dict with keys {sorted(HEADER_KEYS)}, got {str(keys)[:120]}")
    descr, shape, fortran = fmt["descr"], fmt["shape"], fmt["fortran_order"]
    if not isinstance(descr, str):
        raise _bad(f"descr must be a dtype string, got {type(descr).__name__} (structured arrays are not stored)")
    if not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 32:
        raise _bad(f"shape must be a tuple of at most 32 non-negative ints, got {str(shape)[:80]}")
    if not isinstance(fortran, bool):
        raise _bad(f"fortran_order must be True or False, got {str(fortran)[:40]}")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, OverflowError, MemoryError) as err:
        raise _bad(f"descr {descr[:40]!r} is not a dtype ({type(err).__name__})") from None
    if dtype.hasobject or dtype.kind == "V" or dtype.itemsize == 0:
        raise _bad(f"dtype {descr[:40]!r} is not a plain numeric/string dtype (objects would need pickle)")
    return dtype, shape, fortran, math.prod(shape) * dtype.itemsize


def _checked(data: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran, offset)`` of a ``.npy`` member whose header is sound and whose declared
    size equals the data it holds; ``StoreError`` (without allocating) otherwise."""
    if data[:6] != NPY_MAGIC or len(data) < 10:
        raise _bad("no NUMPY magic at the start")
    if data[6] not in (1, 2, 3) or data[7] != 0:
        raise _bad(f"unknown format version {data[6]}.{data[7]}")
    size = 2 if data[6] == 1 else 4
    length = int.from_bytes(data[8:8 + size], "little")
    start = 8 + size + length
    if length > MAX_HEADER or start > len(data):
        raise _bad(f"header length {length} exceeds the member ({len(data)} bytes) or {MAX_HEADER}")
    dtype, shape, fortran, nbytes = _parse_header(bytes(data[8 + size:start]))
    if nbytes != len(data) - start:
        raise _bad(f"header declares shape {shape} of {dtype} = {nbytes} bytes, the member holds {len(data) - start}")
    return dtype, shape, fortran, start


def npy_header(data: bytes) -> NpyHeader:
    """Parse and check the header of a ``.npy`` member; the declared size must equal the data it holds.
    Raises ``StoreError`` (without allocating) on any malformed or lying header."""
    return NpyHeader(*_checked(data))


def load_npy(data: bytes) -> np.ndarray:
    """The array of a ``.npy`` member (a copy, writable), after its header passed :func:`npy_header`."""
    dtype, shape, fortran, start = _checked(data)
    flat = np.frombuffer(data, dtype=dtype, count=(len(data) - start) // dtype.itemsize, offset=start)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def compressed_kind(head: bytes) -> str | None:
    """``"gzip"``/``"bzip2"``/... when ``head`` (a file's first bytes) starts a compressed stream."""
    return next((kind for magic, kind in COMPRESSED.items() if head.startswith(magic)), None)


def refuse_compressed(head: bytes, shard: str | None = None) -> None:
    """Raise ``StoreError`` when a shard file is compressed: shards are plain tars, never decompressed."""
    kind = compressed_kind(head)
    if kind is not None:
        raise StoreError(f"file is {kind}-compressed, not a plain tar; motiondata never decompresses shards: "
                         f"decompress it to a plain .tar or rebuild the shard", shard=shard)


def member_name_problem(name: str) -> str | None:
    """Why a tar member name is refused (absolute, ``..``, a ``/`` in the key, not ``key.field.ext``)."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        return f"member {name[:80]!r} has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return f"member {name[:80]!r} climbs out with '..'"
    if "/" in name.removeprefix("./"):
        return f"member {name[:80]!r} has a '/' in its key; shard members are flat '<key>.<field>.<ext>'"
    key, _, rest = name.removeprefix("./").partition(".")
    if not key or "." not in rest or not rest.rpartition(".")[0] or not rest.rpartition(".")[2]:
        return f"member {name[:80]!r} is not '<key>.<field>.<ext>'"
    return None


def decode_member(ext: str, data: bytes) -> Any:
    """One member's value: ``.npy`` through :func:`load_npy`, ``.json`` with ``json.loads``; anything
    undecodable (including JSON nested too deep to parse) is a ``StoreError``."""
    if ext == "npy":
        return load_npy(data)
    try:
        return decode_value(ext, data)
    except (ValueError, RecursionError, MemoryError) as err:
        raise StoreError(f"undecodable .{ext[:16]} member ({type(err).__name__}: {str(err)[:120]}); the shard "
                         "is corrupt: rebuild it") from None
