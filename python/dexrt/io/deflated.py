"""Deflated DICOM (Deflated Explicit VR Little Endian) read within bounds: no decompression bomb.

The whole data set after the file meta is one raw deflate stream. pydicom inflates it in one ``zlib.decompress``
before any header check, so about 1 MB of file can claim 1 GiB of memory (deflate reaches ~1000:1 on zeros).
Here the stream is inflated twice, both times through a bounded decompressor:

1. counting only: the first :data:`HEADER_BYTES` inflated bytes are kept and parsed up to the pixel data, whose
   size follows from the header (Rows x Columns x frames x samples x bytes per sample, checked against
   dexrt._limits first). The data set may inflate to that header, that pixel data and :data:`TRAILER_BYTES` more,
   no further: the moment the count passes the limit, an InputError names the limit. Memory: the kept header, one
   chunk and the compressed bytes, whatever the stream claims.
2. inflating for real, with the limit as zlib's ``max_length``: what comes out is no larger than the uncompressed
   file the header describes, which dexrt would read anyway.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from dexrt._errors import InputError
from dexrt._limits import check_image_size

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
HEADER_BYTES = 16 << 20  # a radiograph's elements before its pixel data: kilobytes; a few MB with private blobs
TRAILER_BYTES = 1 << 20  # elements after the pixel data (padding, signatures)
_CHUNK = 1 << 20
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, Double Float, Pixel Data
_ELEMENT_HEADER = 12  # tag, VR, reserved, 32-bit length (explicit VR OB/OW/OF/OD)


def read_deflated(path: Path) -> Any:
    """The pydicom FileDataset of a deflated DICOM file (as ``pydicom.dcmread`` would give), inflated within
    bounds; InputError naming the file and the limit otherwise."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset, read_preamble

    with open(path, "rb") as f:
        preamble = read_preamble(f, False)
        meta = read_dataset(f, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
        deflated = f.read()
    limit = _measure(path, deflated)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(deflated, limit + 1)
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt deflated data set ({exc})") from exc
    if len(data) > limit:  # cannot happen after _measure; kept so that the bound never rests on it alone
        raise _too_large(path, limit)
    del deflated
    dataset = read_dataset(cast(BinaryIO, DicomBytesIO(data)), False, True)
    ds = FileDataset(str(path), dataset, preamble, FileMetaDataset(meta), is_implicit_VR=False,
                     is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _measure(path: Path, deflated: bytes) -> int:
    """The limit the inflated data set must stay within, checked by inflating without keeping more than the
    header; InputError if the stream passes it, is truncated or is not deflate at all."""
    head, total, limit = bytearray(), 0, None
    for chunk in _inflate(path, deflated):
        total += len(chunk)
        if len(head) < HEADER_BYTES:
            head += chunk[: HEADER_BYTES - len(head)]
            if len(head) == HEADER_BYTES:
                limit = _declared(path, bytes(head), complete=False)
        if limit is not None and total > limit:
            raise _too_large(path, limit)
    return _declared(path, bytes(head), complete=True) if limit is None else limit


def _inflate(path: Path, deflated: bytes) -> Iterator[bytes]:
    """The inflated stream in chunks of at most _CHUNK bytes (zlib's ``max_length``: never more at once)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = deflated
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, _CHUNK)
            pending = inflater.unconsumed_tail
            if chunk:
                yield chunk
            elif not pending:
                raise InputError(f"{path}: truncated deflated data set (the stream ends before its last block)")
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt deflated data set ({exc})") from exc


def _declared(path: Path, head: bytes, complete: bool) -> int:
    """Header + the pixel data the header declares + TRAILER_BYTES; `head` is the whole data set if `complete`."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    stream = DicomBytesIO(head)
    header = read_dataset(cast(BinaryIO, stream), False, True, stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
    at = stream.tell()
    if int.from_bytes(head[at:at + 4], "little") not in (((t & 0xFFFF) << 16) | (t >> 16) for t in _PIXEL_TAGS):
        if complete:
            return len(head)  # no pixel data at all: refused by the header checks, no bigger than it is
        raise InputError(f"{path}: the deflated data set has no pixel data in its first {HEADER_BYTES} bytes "
                         "inflated; no radiograph header is that large")
    try:
        rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        samples = min(int(header.get("SamplesPerPixel", 1) or 1), 4)
        allocated = min(int(header.get("BitsAllocated", 16) or 16), 64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: unreadable image size in the deflated data set's header ({exc})") from exc
    check_image_size(path, rows, columns, frames)
    pixels = rows * columns * frames * samples * ((allocated + 7) // 8)
    return at + _ELEMENT_HEADER + pixels + 1 + TRAILER_BYTES


def _too_large(path: Path, limit: int) -> InputError:
    return InputError(f"{path}: the deflated data set inflates to more than {limit} bytes, more than its header "
                      "declares (header, pixel data and 1 MiB); refused as a decompression bomb")
