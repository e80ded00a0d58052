"""IDX parsing: header, dimensions, sizes; never anything but bytes into an array."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.data import DatasetFormatError, idx


def test_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    idx.write(tmp_path / "a", a)
    np.testing.assert_array_equal(idx.read(tmp_path / "a", (3, 4, 5)), a)
    idx.validate(tmp_path / "a", (3, 4, 5))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, r"magic number 0x00000d03"),  # float IDX, not ubyte
        (b"<htm", r"magic number 0x3c68746d"),
        (b"\x00\x00", r"too short"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", r"header truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", r"11 bytes, expected 13"),
    ],
)
def test_malformed_files(tmp_path, raw, match):
    (tmp_path / "f").write_bytes(raw)
    with pytest.raises(DatasetFormatError, match=match):
        idx.read(tmp_path / "f")


def test_wrong_dimensions(tmp_path):
    idx.write(tmp_path / "a", np.zeros((2, 3), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"dimensions \(2, 3\), expected \(2, 4\)"):
        idx.validate(tmp_path / "a", (2, 4))
