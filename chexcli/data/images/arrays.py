"""Decoded pixel arrays: the three kinds a decoder returns and min-max scaling."""

from __future__ import annotations

import numpy as np

# kinds of decoded arrays: uint8, uint16, or floating point in [0, 1]
U8, U16, FLOAT = "u8", "u16", "float"


def minmax(arr: np.ndarray) -> np.ndarray:
    """Min-max scale to float32 [0, 1] (all zeros for a constant image)."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def to_unit_float(arr: np.ndarray, kind: str) -> np.ndarray:
    """float32 in [0, 1]: 8-bit / 255, 16-bit / 65535, float as it is."""
    if kind == U8:
        return arr.astype(np.float32) / 255
    if kind == U16:
        return arr.astype(np.float32) / 65535
    return np.ascontiguousarray(arr, dtype=np.float32)


def to_uint8(arr: np.ndarray, kind: str) -> np.ndarray:
    """uint8: 8-bit as it is, 16-bit and float rounded from [0, 1] * 255."""
    if kind == U8:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if kind == U16:
        # round(v * 255 / 65535) in exact integer arithmetic
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(np.rint(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)
