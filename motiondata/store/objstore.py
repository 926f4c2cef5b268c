"""Object storage (``s3://``, ``gs://``...) through fsspec: the one place that turns a URL into a filesystem.

A store at ``s3://bucket/prefix`` has exactly the layout of a local store (``store/layout.py``); its keys
are the layout's relative paths under the prefix. Object stores have no rename: every object is written
whole (a PUT is atomic for readers) and the shard manifest is written last, so it stays the done-marker.

Credentials and endpoints come from the usual places (``AWS_*`` variables, ``~/.aws``, and fsspec's
``FSSPEC_S3_ENDPOINT_URL`` style variables); ``MOTIONDATA_STAGING`` sets where a node stages the files it
builds before uploading them (default ``~/.cache/motiondata/staging``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from typing import Any

from motiondata.errors import MotionDataError

LOCAL_SCHEMES = ("", "file", "local")
EXTRAS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def scheme_of(url: str | os.PathLike) -> str:
    text = os.fspath(url)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(url: str | os.PathLike) -> bool:
    """True for an fsspec URL that is not a local path (``s3://``, ``gs://``, ``memory://``...)."""
    return scheme_of(url) not in LOCAL_SCHEMES


def local_path(url: str | os.PathLike) -> Path:
    """The local path of a plain path or a ``file://`` URL."""
    text = os.fspath(url)
    return Path(text.split("://", 1)[1] if scheme_of(text) in ("file", "local") else text)


def filesystem(url: str) -> tuple[Any, str]:
    """``(fs, root path in fs)`` for a URL; one line naming the missing package when fsspec cannot open it."""
    import fsspec.core

    try:
        fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False) if scheme_of(url) in ("s3", "s3a") \
            else fsspec.core.url_to_fs(url)
    except ImportError as err:
        package = EXTRAS.get(scheme_of(url), "the fsspec implementation for this scheme")
        raise MotionDataError(f"{url}: {scheme_of(url)}:// needs {package} ({err}); install it with "
                              f"pip install {package}") from err
    except ValueError as err:
        raise MotionDataError(f"{url}: not a URL fsspec knows ({err}); use s3://bucket/prefix, gs://... "
                              "or a local path") from err
    return fs, root.rstrip("/")


def join(url: str, *parts: str) -> str:
    """``join("s3://b/p", "shards", "x.tar") == "s3://b/p/shards/x.tar"``."""
    return posixpath.join(url.rstrip("/"), *parts)


def staging_dir(url: str) -> Path:
    """The local directory this node stages a remote store's files in: the same path on every node, so a
    shard task finds it by the URL alone."""
    base = Path(os.environ.get("MOTIONDATA_STAGING") or Path.home() / ".cache" / "motiondata" / "staging")
    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    return base / digest


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for a library that opens ``url`` itself (zarr's FsspecStore): no S3 listing cache, so
    objects written by another node are seen."""
    return {"use_listings_cache": False} if scheme_of(url) in ("s3", "s3a") else {}


def open_zarr_group(url: str) -> Any:
    """The Zarr v3 group at a remote ``url``, read-only, through zarr's fsspec store."""
    import zarr

    return zarr.open_group(url, mode="r", zarr_format=3, storage_options=storage_options(url))
