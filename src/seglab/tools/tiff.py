"""Tiled, compressed TIFF label maps (with the palette) for huge images.

GIS and pathology viewers (GDAL, QGIS, QuPath) open a huge label map as a tiled TIFF, one tile at a time. Pillow
reads tiled TIFFs but cannot write them, so this writes baseline TIFF 6.0 itself:
deflate-compressed square tiles in row-major order, 8-bit palette images (class colours in the ColorMap, the
pixel values are the class indices) or 16-bit grayscale for more than 256 classes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from seglab.checkpoint import atomic_write

# TIFF tag numbers and field types
_WIDTH, _LENGTH, _BITS, _COMPRESSION, _PHOTOMETRIC = 256, 257, 258, 259, 262
_SAMPLES, _PLANAR, _COLORMAP, _TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_BYTES = 277, 284, 320, 322, 323, 324, 325
_SAMPLE_FORMAT = 339
_SHORT, _LONG = 3, 4
_DEFLATE = 8  # Adobe deflate (zlib)
_PALETTE, _BLACK_IS_ZERO = 3, 1
_MAX_OFFSET = 2**32 - 1  # classic TIFF offsets are 32-bit


def write_tiled_tiff(path: str | Path, labels: Any, palette: Any | None = None, tile: int = 512, level: int = 6
                     ) -> Path:
    """Writes an (H, W) label map as a tiled, deflate-compressed TIFF, atomically.

    Args:
        path: the `.tif` file.
        labels: (H, W) uint8 or uint16 class indices (numpy or torch); edge tiles are padded with 0 as the format
            requires (readers crop them to the image).
        palette: (K, 3) uint8 colours for an 8-bit map (written as the TIFF ColorMap); None writes grayscale.
        tile: tile side in pixels, a multiple of 16 (TIFF's rule).
        level: zlib compression level.
    """
    array = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"labels must be an (H, W) uint8 or uint16 map, got {array.dtype} {array.shape}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (TIFF's rule), got {tile}")
    colormap = None
    if palette is not None:
        colours = np.asarray(palette, dtype=np.uint8)
        if array.dtype != np.uint8 or colours.ndim != 2 or colours.shape[1] != 3 or len(colours) > 256:
            raise ValueError(f"a palette goes with a uint8 map and holds at most 256 (K, 3) colours, got "
                             f"{colours.shape} for a {array.dtype} map")
        table = np.zeros((256, 3), dtype=np.uint16)
        table[: len(colours)] = colours.astype(np.uint16) * 257  # 8-bit colour to TIFF's 16-bit range
        colormap = table.T.reshape(-1)  # all reds, then all greens, then all blues
    path = Path(path)
    atomic_write(path, lambda tmp: _write(tmp, array, colormap, tile, level))
    return path


def _write(filename: str, array: np.ndarray, colormap: np.ndarray | None, tile: int, level: int) -> None:
    height, width = array.shape
    tiles_down, tiles_across = -(-height // tile), -(-width // tile)
    offsets, sizes = [], []
    with open(filename, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", 0))  # little-endian header; the directory offset comes last
        padded = np.zeros((tile, tile), dtype=array.dtype)
        for row in range(tiles_down):
            for col in range(tiles_across):
                block = array[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
                padded[...] = 0
                padded[: block.shape[0], : block.shape[1]] = block
                data = zlib.compress(padded.astype(padded.dtype.newbyteorder("<")).tobytes(), level)
                offsets.append(f.tell())
                sizes.append(len(data))
                f.write(data)
        entries = [
            (_WIDTH, _LONG, [width]),
            (_LENGTH, _LONG, [height]),
            (_BITS, _SHORT, [array.dtype.itemsize * 8]),
            (_COMPRESSION, _SHORT, [_DEFLATE]),
            (_PHOTOMETRIC, _SHORT, [_PALETTE if colormap is not None else _BLACK_IS_ZERO]),
            (_SAMPLES, _SHORT, [1]),
            (_PLANAR, _SHORT, [1]),
        ]
        if colormap is not None:
            entries.append((_COLORMAP, _SHORT, colormap.tolist()))
        entries += [
            (_TILE_WIDTH, _LONG, [tile]),
            (_TILE_LENGTH, _LONG, [tile]),
            (_TILE_OFFSETS, _LONG, offsets),
            (_TILE_BYTES, _LONG, sizes),
            (_SAMPLE_FORMAT, _SHORT, [1]),  # unsigned integers
        ]
        _write_directory(f, entries)


def _write_directory(f: BinaryIO, entries: list[tuple[int, int, list[int]]]) -> None:
    """Writes the values that do not fit in an entry, then the image file directory, and points the header at it."""
    fmt = {_SHORT: "H", _LONG: "I"}
    packed = []
    for tag, kind, values in entries:  # tags in ascending order, as the format requires
        data = struct.pack(f"<{len(values)}{fmt[kind]}", *values)
        if len(data) <= 4:
            packed.append((tag, kind, len(values), data.ljust(4, b"\x00")))
        else:
            if f.tell() % 2:
                f.write(b"\x00")  # values start on a word boundary
            offset = f.tell()
            f.write(data)
            packed.append((tag, kind, len(values), struct.pack("<I", offset)))
    if f.tell() % 2:
        f.write(b"\x00")
    directory = f.tell()
    if directory + 12 * len(packed) + 6 > _MAX_OFFSET:
        raise ValueError("the label map does not fit in a classic TIFF (4 GiB); use larger tiles or fewer pixels")
    f.write(struct.pack("<H", len(packed)))
    for tag, kind, count, value in packed:
        f.write(struct.pack("<HHI", tag, kind, count) + value)
    f.write(struct.pack("<I", 0))  # no further directories
    f.seek(4)
    f.write(struct.pack("<I", directory))
