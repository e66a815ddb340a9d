"""IDX files (the MNIST format): checks (magic, size, counts) and reading."""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from torch import Tensor

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


def read_idx(path: Path) -> Tensor:
    """The unsigned bytes of the IDX file ``path`` as a ``uint8`` tensor of the shape its header gives.

    The values and shape torchvision's ``read_image_file`` / ``read_label_file`` give (labels stay
    ``uint8``); check the file with :func:`check_idx_pair` first.
    """
    data = path.read_bytes()
    dims = data[3]
    sizes = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * dims).view(*sizes)
