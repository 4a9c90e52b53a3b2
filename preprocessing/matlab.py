"""Stream slices of a uint8 array out of a MATLAB level 5 `.mat` file without loading it whole.

`scipy.io.loadmat` reads a whole variable into memory: 1.6 GB for SVHN's `extra_32x32.mat`. The
arrays of interest here are stored column-major with the example axis last, so example `n` of an
array `[d0, ..., dk, N]` is one contiguous run of `d0 * ... * dk` bytes. This module finds that
run for a range of examples: by seeking in an uncompressed variable, or by decompressing up to
it in a zlib-compressed one (what `savemat(..., do_compression=True)` and MATLAB's default
`-v7` write).

Format (MathWorks, "MAT-File Format", level 5): a 128-byte header whose last two bytes are `IM`
for little-endian files and `MI` for big-endian ones, then data elements. Each element starts
with an 8-byte tag (uint32 data type, uint32 byte count), or with a 4-byte tag holding both
as uint16 ("small data element", byte count in the upper half) followed by up to 4 data bytes.
Elements are padded to 8 bytes, except the payload of a compressed element. A variable is an
`miMATRIX` element, possibly wrapped in an `miCOMPRESSED` one, holding sub-elements for the
array flags (class in the low byte), the dimensions, the name and the real part.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import IO, Iterator

import numpy as np

HEADER_BYTES = 128
TAG_BYTES = 8
MI_INT8 = 1
MI_UINT8 = 2
MI_INT32 = 5
MI_UINT32 = 6
MI_MATRIX = 14
MI_COMPRESSED = 15
MX_UINT8_CLASS = 9

_DECOMPRESS_CHUNK = 1 << 20


class MatFileError(ValueError):
    """A `.mat` file that is not level 5 or lacks the expected uint8 variable."""


class _RawReader:
    """A reader of a plain file from a given offset, where skipping is a seek."""

    def __init__(self, handle: IO[bytes], offset: int):
        self._handle = handle
        self._handle.seek(offset)

    def read(self, count: int) -> bytes:
        return self._handle.read(count)

    def skip(self, count: int) -> None:
        self._handle.seek(count, 1)


class _ZlibReader:
    """A reader of the decompressed payload of one `miCOMPRESSED` element, where skipping decompresses."""

    def __init__(self, handle: IO[bytes], offset: int, compressed_bytes: int):
        self._handle = handle
        self._handle.seek(offset)
        self._remaining = compressed_bytes
        self._decompressor = zlib.decompressobj()
        self._buffer = bytearray()
        self._finished = False

    def _fill(self, count: int) -> None:
        while len(self._buffer) < count and not self._finished:
            if self._decompressor.unconsumed_tail:
                chunk = self._decompressor.unconsumed_tail
            elif self._remaining > 0:
                chunk = self._handle.read(min(_DECOMPRESS_CHUNK, self._remaining))
                self._remaining = self._remaining - len(chunk) if chunk else 0
            else:
                self._buffer += self._decompressor.flush()
                self._finished = True
                break
            # Bounding the output keeps memory flat however far a skip goes.
            limit = max(count - len(self._buffer), _DECOMPRESS_CHUNK)
            self._buffer += self._decompressor.decompress(chunk, limit)

    def read(self, count: int) -> bytes:
        self._fill(count)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def skip(self, count: int) -> None:
        while count > 0:
            step = min(count, _DECOMPRESS_CHUNK)
            skipped = len(self.read(step))
            if skipped == 0:
                return
            count -= skipped


@dataclasses.dataclass(frozen=True)
class _Tag:
    data_type: int
    num_bytes: int
    small_data: bytes | None  # The data of a small data element, None for a normal element.


def _read_tag(reader, byte_order: str) -> _Tag | None:
    raw = reader.read(TAG_BYTES)
    if len(raw) < TAG_BYTES:
        return None
    (first,) = struct.unpack(byte_order + "I", raw[:4])
    if first >> 16:
        num_bytes = first >> 16
        return _Tag(first & 0xFFFF, num_bytes, raw[4:4 + num_bytes])
    (num_bytes,) = struct.unpack(byte_order + "I", raw[4:])
    return _Tag(first, num_bytes, None)


def _read_element(reader, byte_order: str, what: str, path: str) -> tuple[int, bytes]:
    tag = _read_tag(reader, byte_order)
    if tag is None:
        raise MatFileError(f"{path}: truncated MATLAB file while reading the {what}")
    if tag.small_data is not None:
        return tag.data_type, tag.small_data
    data = reader.read(tag.num_bytes)
    padding = -tag.num_bytes % 8
    if padding:
        reader.skip(padding)
    if len(data) < tag.num_bytes:
        raise MatFileError(f"{path}: truncated MATLAB file while reading the {what}")
    return tag.data_type, data


@dataclasses.dataclass(frozen=True)
class _MatrixHeader:
    name: str
    class_id: int
    shape: tuple[int, ...]
    data_type: int
    data_bytes: int


def _read_matrix_header(reader, byte_order: str, path: str) -> _MatrixHeader:
    _, flags = _read_element(reader, byte_order, "array flags", path)
    class_id = struct.unpack(byte_order + "I", flags[:4])[0] & 0xFF
    _, dims = _read_element(reader, byte_order, "dimensions", path)
    shape = struct.unpack(byte_order + f"{len(dims) // 4}i", dims)
    _, name = _read_element(reader, byte_order, "array name", path)
    tag = _read_tag(reader, byte_order)
    if tag is None:
        raise MatFileError(f"{path}: truncated MATLAB file while reading the data of {name.decode(errors='replace')!r}")
    return _MatrixHeader(name.decode("ascii", errors="replace"), class_id, tuple(shape), tag.data_type,
                         tag.num_bytes)


def _byte_order(handle: IO[bytes], path: str) -> str:
    handle.seek(0)
    header = handle.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise MatFileError(f"{path}: too short for a MATLAB level 5 file ({len(header)} bytes)")
    indicator = header[126:128]
    if indicator == b"IM":
        return "<"
    if indicator == b"MI":
        return ">"
    raise MatFileError(f"{path}: not a MATLAB level 5 file (a v7.3 HDF5 file or another format);"
                       " expected the level 5 format that scipy.io.savemat and MATLAB's -v7 write")


def _find_uint8_array(handle: IO[bytes], variable: str, path: str) -> tuple[tuple[int, ...], object]:
    """Return the shape of a uint8 variable and a reader positioned at its first data byte."""
    byte_order = _byte_order(handle, path)
    offset = HEADER_BYTES
    while True:
        outer = _read_tag(_RawReader(handle, offset), byte_order)
        if outer is None:
            raise MatFileError(f"{path}: no variable {variable!r}")
        payload_offset = offset + TAG_BYTES
        if outer.data_type == MI_COMPRESSED:
            reader = _ZlibReader(handle, payload_offset, outer.num_bytes)
            inner = _read_tag(reader, byte_order)
            is_matrix = inner is not None and inner.data_type == MI_MATRIX
            next_offset = payload_offset + outer.num_bytes
        else:
            reader = _RawReader(handle, payload_offset)
            is_matrix = outer.data_type == MI_MATRIX
            next_offset = payload_offset + outer.num_bytes + (-outer.num_bytes % 8)
        if is_matrix:
            header = _read_matrix_header(reader, byte_order, path)
            if header.name == variable:
                expected_bytes = int(np.prod(header.shape))
                if (header.class_id != MX_UINT8_CLASS or header.data_type != MI_UINT8
                        or header.data_bytes != expected_bytes):
                    raise MatFileError(
                        f"{path}: variable {variable!r} is not a plain uint8 array (class {header.class_id},"
                        f" data type {header.data_type}, {header.data_bytes} bytes for shape {list(header.shape)})")
                return header.shape, reader
        offset = next_offset


def iter_uint8_examples(handle: IO[bytes], variable: str, start: int, stop: int,
                        path: str = "<file>") -> Iterator[np.ndarray]:
    """Yield examples `start..stop-1` of a uint8 variable whose last axis indexes examples.

    Args:
      handle: a seekable binary file opened on a level 5 `.mat` file.
      variable: the variable's name.
      path: the file's name, for error messages.
    Yields:
      uint8 arrays `[d0, ..., dk]` for a variable of shape `[d0, ..., dk, N]`, in MATLAB's
      index order (element `[i0, ..., ik]` of example `n` is the variable's `[i0, ..., ik, n]`).
    """
    shape, reader = _find_uint8_array(handle, variable, path)
    example_shape = shape[:-1]
    num_examples = shape[-1]
    if not 0 <= start <= stop <= num_examples:
        raise ValueError(f"{path}: examples [{start}, {stop}) are outside [0, {num_examples})")
    example_bytes = int(np.prod(example_shape))
    reader.skip(start * example_bytes)
    for _ in range(start, stop):
        data = reader.read(example_bytes)
        if len(data) < example_bytes:
            raise MatFileError(f"{path}: truncated data in variable {variable!r}")
        # Column-major storage: the first axis varies fastest.
        yield np.frombuffer(data, np.uint8).reshape(example_shape[::-1]).transpose()
