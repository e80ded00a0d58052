"""The IDX format (LeCun's MNIST files): a 4-byte magic number 0x0000TTDD (TT the element type,
DD the number of dimensions), DD big-endian uint32 sizes, then the data, row-major.

Parsed with numpy.frombuffer: reading a dataset never executes anything from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpucnn.data.errors import DatasetFormatError

UBYTE = 0x08


def parse_header(head: bytes, path: str | Path) -> tuple[int, ...]:
    """The dimensions an IDX header declares for an unsigned-byte array.

    ``head`` holds at least the header: 4 bytes of magic number and 4 bytes per dimension.
    """
    if len(head) < 4:
        raise DatasetFormatError(f"{path}: {len(head)} bytes is too short for an IDX header")
    zero, dtype, ndim = int.from_bytes(head[:2], "big"), head[2], head[3]
    if zero != 0 or dtype != UBYTE or not 1 <= ndim <= 4:
        raise DatasetFormatError(
            f"{path}: not an unsigned-byte IDX file: magic number 0x{head[:4].hex()} "
            f"(expected 0x000008 followed by 01..04)"
        )
    if len(head) < 4 + 4 * ndim:
        raise DatasetFormatError(f"{path}: header truncated ({len(head)} bytes for {ndim} dims)")
    return tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def _check(path: Path, shape: tuple[int, ...], size: int, expected: tuple[int, ...] | None) -> int:
    """Check declared dimensions and total size; returns the data offset."""
    if expected is not None and shape != tuple(expected):
        raise DatasetFormatError(f"{path}: IDX dimensions {shape}, expected {tuple(expected)}")
    offset = 4 + 4 * len(shape)
    want = offset + int(np.prod(shape))
    if size != want:
        raise DatasetFormatError(
            f"{path}: {size} bytes, expected {want} for an IDX array of shape {shape}"
        )
    return offset


def validate(path: str | Path, expected_shape: tuple[int, ...]) -> None:
    """Check magic number, dimensions and total size against the registry (reads the header)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4 + 4 * 4)
    _check(path, parse_header(head, path), path.stat().st_size, expected_shape)


def read(path: str | Path, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file into a uint8 array of its declared shape."""
    path = Path(path)
    data = path.read_bytes()
    shape = parse_header(data[:20], path)
    offset = _check(path, shape, len(data), expected_shape)
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def write(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (used by tests and by users building datasets)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, UBYTE, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
    Path(path).write_bytes(head + a.tobytes())
