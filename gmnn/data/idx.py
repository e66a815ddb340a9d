"""Checks of IDX files (the MNIST format) before torchvision reads them: magic, size, counts."""

from __future__ import annotations

import struct
from pathlib import Path

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # unsigned bytes, 3 and 1 dimensions


def idx_count(path: Path, magic: int) -> int:
    """The number of items in the IDX file ``path``, after checking its magic number and its length.

    Raises:
        ValueError: Naming ``path``, when the magic number is not ``magic`` or the file is shorter
            or longer than its header says.
    """
    dims = magic & 0xFF
    header = 4 + 4 * dims
    data = path.read_bytes()[:header]
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX file: {len(data)} bytes, shorter than its {header}-byte header")
    found, *sizes = struct.unpack(f">I{dims}I", data)
    if found != magic:
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise ValueError(f"{path}: not an IDX {kind} file: magic number 0x{found:08x}, expected 0x{magic:08x}")
    expected = header + _product(sizes)
    actual = path.stat().st_size
    if actual != expected:
        shape = "x".join(map(str, sizes))
        raise ValueError(
            f"{path}: {'truncated' if actual < expected else 'overlong'} IDX file: its header promises "
            f"{shape} bytes of data ({expected} bytes in all) but the file has {actual} bytes"
        )
    return sizes[0]


def _product(sizes: list[int]) -> int:
    total = 1
    for size in sizes:
        total *= size
    return total


def check_idx_pair(images: Path, labels: Path) -> None:
    """Raise ``ValueError`` unless ``images`` and ``labels`` are whole IDX files with one label per image."""
    count, labels_count = idx_count(images, IMAGES_MAGIC), idx_count(labels, LABELS_MAGIC)
    if count != labels_count:
        raise ValueError(f"{images} holds {count} images but {labels} holds {labels_count} labels: they must match")
