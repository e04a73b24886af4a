"""Where Ray Train and Ray Tune keep their runs: a directory every node sees, or object storage.

`train.storage_path` / `tune.storage_path` may be `s3://bucket/prefix`. Ray writes through pyarrow;
this module turns such a URI into the pair Ray's `RunConfig` takes: the path inside the bucket and
a `pyarrow.fs.S3FileSystem`. An S3-compatible server (MinIO, Ceph, moto, ...) is named by the AWS
SDKs' own variables, `$AWS_ENDPOINT_URL_S3` or `$AWS_ENDPOINT_URL` (e.g. `http://10.0.0.5:9000`);
without either, the file system talks to AWS S3.

Credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile,
an instance role), resolved by pyarrow on each process that opens the storage. The file system is
built without explicit keys, so when Ray pickles it to the workers it carries the endpoint but no
secret: every node needs the credentials in its own environment, and none travel through Ray,
params or logs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from spd.errors import SpdError

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
OBJECT_STORE_SCHEMES = ("s3",)


def is_object_store(storage_path: str) -> bool:
    """Whether `storage_path` is an object-store URI (as opposed to a directory)."""
    return urllib.parse.urlparse(storage_path).scheme in OBJECT_STORE_SCHEMES


def s3_endpoint() -> str | None:
    """The S3-compatible server's URL from the environment, or None (AWS S3 itself)."""
    for name in ENDPOINT_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def s3_filesystem(endpoint: str | None = None) -> Any:
    """A pyarrow S3FileSystem for `endpoint` (default: from the environment); keys from the environment."""
    from pyarrow import fs

    endpoint = endpoint if endpoint is not None else s3_endpoint()
    if not endpoint:
        return fs.S3FileSystem()
    url = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    if url.scheme not in ("http", "https") or not url.netloc:
        raise SpdError(
            f"S3 endpoint {endpoint!r} ({' / '.join(ENDPOINT_VARIABLES)}): expected http(s)://host[:port]"
        )
    # An S3-compatible server answers on its own host: path-style requests, no bucket-region lookup.
    return fs.S3FileSystem(
        endpoint_override=url.netloc,
        scheme=url.scheme,
        region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
    )


def ray_storage(storage_path: str) -> tuple[str, Any]:
    """(path, filesystem) for Ray's `RunConfig(storage_path=..., storage_filesystem=...)`.

    A directory passes through with no file system (Ray uses the local one); `s3://bucket/prefix`
    becomes `bucket/prefix` on an S3FileSystem aimed at the configured endpoint.
    """
    if not is_object_store(storage_path):
        return storage_path, None
    url = urllib.parse.urlparse(storage_path)
    if not url.netloc:
        raise SpdError(f"storage path {storage_path!r}: no bucket (expected s3://bucket/prefix)")
    if url.query or url.params:
        raise SpdError(
            f"storage path {storage_path!r}: options in the URI are not read; set the endpoint "
            f"through {' or '.join(ENDPOINT_VARIABLES)}"
        )
    return f"{url.netloc}/{url.path.strip('/')}".rstrip("/"), s3_filesystem()


def describe_storage(storage_path: str) -> str:
    """`storage_path` as messages name it: an object store with the endpoint it was reached at."""
    if not is_object_store(storage_path):
        return storage_path
    endpoint = s3_endpoint()
    return f"{storage_path} (object storage at {endpoint})" if endpoint else f"{storage_path} (AWS S3)"


def remove_tree(location: str) -> None:
    """Delete a directory, or every object under an s3:// prefix; nothing there is fine."""
    path, filesystem = ray_storage(location)
    if filesystem is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_dir(path)


def write_text(location: str, text: str) -> None:
    """A small file in a directory (written atomically) or an object (S3 puts are atomic)."""
    from spd.io import atomic_write_text

    path, filesystem = ray_storage(location)
    if filesystem is None:
        atomic_write_text(path, text)
        return
    with filesystem.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(location: str) -> str | None:
    """The file's or object's text; None when there is none."""
    path, filesystem = ray_storage(location)
    try:
        if filesystem is None:
            return Path(path).read_text()
        with filesystem.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, IsADirectoryError):
        return None
