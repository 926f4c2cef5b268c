"""A real S3 server on loopback (moto's server mode) for the object-storage tests.

``s3_server`` (session) starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and points boto, s3fs and
fsspec at it through the environment (so Ray workers and CLI subprocesses started afterwards reach it too);
``s3_bucket`` (per test) creates an empty bucket and yields its ``s3://`` URL.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_SESSION_TOKEN": "testing", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server on loopback; skips when moto or s3fs is not installed."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import fsspec.config

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*ENV, "FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"]}
    os.environ.update(ENV, FSSPEC_S3_ENDPOINT_URL=endpoint, AWS_ENDPOINT_URL=endpoint)
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint  # fsspec read the env at import
    try:
        yield endpoint
    finally:
        fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server):
    """``s3://<new bucket>``: an empty bucket on the loopback server."""
    import s3fs

    name = f"md-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"
