"""File access for local paths and `gs://` URLs, shared by the preprocessing jobs and the schema.

`gs://` paths go through google-cloud-storage, every other path through `tf.io.gfile`.
TensorFlow 2.21 registers a `gs` file system of its own, but that client sends its requests to
www.googleapis.com and ignores `STORAGE_EMULATOR_HOST`. In a network namespace with only a
loopback device, `tf.io.gfile.exists("gs://...")` failed on resolving that host while an emulator
listened on 127.0.0.1. google-cloud-storage honours the variable, so one code path serves Google
Cloud Storage and a local emulator alike. Credentials are the client's usual
Application Default Credentials; with `STORAGE_EMULATOR_HOST` set it uses anonymous ones.

A GCS object appears only once its upload is complete, so writes to `gs://` need no temporary
name; local writes go through a temporary name and a rename.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import uuid
from typing import IO, Iterable, Iterator

GCS_SCHEME = "gs://"


def is_gcs(path: str) -> bool:
    return path.startswith(GCS_SCHEME)


def join(directory: str, name: str) -> str:
    """Join a folder and a relative name with `/`, which `gs://` requires on every platform."""
    return directory.rstrip("/") + "/" + name.lstrip("/")


def _split_gcs(path: str) -> tuple[str, str]:
    bucket, _, name = path[len(GCS_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"{path}: expected gs://BUCKET/OBJECT")
    return bucket, name


@functools.lru_cache(maxsize=None)
def _gcs_client(emulator_host: str | None):
    # One client per emulator address, so that a test that starts its own emulator gets a fresh one.
    del emulator_host
    from google.cloud import storage

    return storage.Client()


def _gcs_bucket(bucket: str):
    return _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST")).bucket(bucket)


def _gcs_blob(path: str):
    bucket, name = _split_gcs(path)
    return _gcs_bucket(bucket).blob(name)


def _gcs_prefix(directory: str) -> tuple[str, str]:
    bucket, name = _split_gcs(directory)
    return bucket, (name.rstrip("/") + "/") if name else ""


def is_file(path: str) -> bool:
    if is_gcs(path):
        return _gcs_blob(path).exists()
    import tensorflow as tf

    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def is_dir(path: str) -> bool:
    """Return whether `path` is a folder; on `gs://`, whether any object name starts with `path/`."""
    if is_gcs(path):
        bucket, prefix = _gcs_prefix(path)
        client = _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST"))
        return any(True for _ in client.list_blobs(bucket, prefix=prefix, max_results=1))
    import tensorflow as tf

    return tf.io.gfile.isdir(path)


def exists(path: str) -> bool:
    return is_file(path) or is_dir(path)


def list_files(directory: str) -> list[tuple[str, int]]:
    """List the files directly inside `directory` as sorted `(name, size in bytes)` pairs.

    Subfolders are left out. A missing folder gives an empty list.
    """
    if is_gcs(directory):
        bucket, prefix = _gcs_prefix(directory)
        client = _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST"))
        files = [(blob.name[len(prefix):], int(blob.size or 0))
                 for blob in client.list_blobs(bucket, prefix=prefix, delimiter="/")]
        return sorted((name, size) for name, size in files if name)
    import tensorflow as tf

    if not tf.io.gfile.isdir(directory):
        return []
    files = []
    for name in tf.io.gfile.listdir(directory):
        path = join(directory, name)
        if name.endswith("/") or tf.io.gfile.isdir(path):
            continue
        files.append((name, tf.io.gfile.stat(path).length))
    return sorted(files)


def list_tree(directory: str) -> set[str]:
    """Return the paths, relative to `directory` and joined with `/`, of every file below it."""
    if is_gcs(directory):
        bucket, prefix = _gcs_prefix(directory)
        client = _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST"))
        return {blob.name[len(prefix):] for blob in client.list_blobs(bucket, prefix=prefix)
                if not blob.name.endswith("/")}
    import tensorflow as tf

    root = directory.rstrip("/")
    paths = set()
    for folder, _, files in tf.io.gfile.walk(root):
        relative = folder[len(root):].strip("/")
        paths.update(f"{relative}/{name}" if relative else name for name in files)
    return paths


def size(path: str) -> int:
    """Return the size of a file in bytes; raise FileNotFoundError naming it if it is missing."""
    if is_gcs(path):
        from google.api_core import exceptions

        blob = _gcs_blob(path)
        try:
            blob.reload()
        except exceptions.NotFound:
            raise FileNotFoundError(f"{path}: file not found") from None
        return int(blob.size)
    import tensorflow as tf

    if not is_file(path):
        raise FileNotFoundError(f"{path}: file not found")
    return tf.io.gfile.stat(path).length


def open_file(path: str, mode: str = "rb", chunk_size: int | None = None) -> IO:
    """Open a file for reading (`r`, `rb`) or writing (`w`, `wb`).

    Readers are seekable, as `zipfile` and `scipy.io.loadmat` require. `chunk_size` sets the
    bytes a `gs://` reader fetches per request (the library default is 40 MiB, wasteful for
    random access to small members of a big archive). A missing file raises FileNotFoundError.
    """
    if mode not in ("r", "rb", "w", "wb"):
        raise ValueError(f"mode must be r, rb, w or wb, got {mode!r}")
    if is_gcs(path):
        blob = _gcs_blob(path)
        if mode.startswith("r"):
            size(path)  # Raises FileNotFoundError before the first read would.
        kwargs = {"chunk_size": chunk_size} if chunk_size else {}
        return blob.open(mode, **kwargs)
    import tensorflow as tf

    if mode.startswith("r") and not is_file(path):
        raise FileNotFoundError(f"{path}: file not found")
    return tf.io.gfile.GFile(path, mode)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as handle:
        return handle.read()


def make_dirs(directory: str) -> None:
    """Create a folder and its parents; `gs://` has no folders, so nothing happens there."""
    if is_gcs(directory):
        return
    import tensorflow as tf

    tf.io.gfile.makedirs(directory)


def remove(path: str) -> bool:
    """Delete a file if it exists; return whether it did."""
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            _gcs_blob(path).delete()
        except exceptions.NotFound:
            return False
        return True
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return False
    tf.io.gfile.remove(path)
    return True


def rename(source: str, destination: str) -> None:
    """Move a file, replacing `destination`. On `gs://` this is a server-side copy and a delete."""
    if is_gcs(source) != is_gcs(destination):
        raise ValueError(f"cannot rename {source} to {destination} across file systems")
    if is_gcs(source):
        source_bucket, source_name = _split_gcs(source)
        destination_bucket, destination_name = _split_gcs(destination)
        bucket = _gcs_bucket(source_bucket)
        bucket.copy_blob(bucket.blob(source_name), _gcs_bucket(destination_bucket), destination_name)
        bucket.blob(source_name).delete()
        return
    import tensorflow as tf

    tf.io.gfile.rename(source, destination, overwrite=True)


def write_tfrecords(path: str, records: Iterable[bytes], compression: str = "") -> int:
    """Write serialized records to one TFRecord file, `compression` "" or "GZIP"; return the count.

    The file appears only once it is complete: a local file is written under a temporary name
    and renamed, a `gs://` object is written to a local temporary file and then uploaded.
    """
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=compression or None)
    count = 0
    if is_gcs(path):
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "records")
            with tf.io.TFRecordWriter(local, options) as writer:
                for record in records:
                    writer.write(record)
                    count += 1
            _gcs_blob(path).upload_from_filename(local)
        return count

    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    with tf.io.TFRecordWriter(temporary, options) as writer:
        for record in records:
            writer.write(record)
            count += 1
    tf.io.gfile.rename(temporary, path, overwrite=True)
    return count


@contextlib.contextmanager
def _local_copy(path: str) -> Iterator[str]:
    if not is_gcs(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "records")
        _gcs_blob(path).download_to_filename(local)
        yield local


def read_tfrecords(path: str, compression: str = "") -> Iterator[bytes]:
    """Yield the serialized records of one TFRecord file, `compression` "" or "GZIP".

    A `gs://` file is first downloaded to a local temporary file.
    """
    import tensorflow as tf

    if not is_file(path):
        raise FileNotFoundError(f"{path}: file not found")
    with _local_copy(path) as local:
        for record in tf.data.TFRecordDataset(local, compression_type=compression or None):
            yield record.numpy()
