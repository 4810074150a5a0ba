"""Small numpy helpers for the hot path, by sorting.

NumPy 2's ``np.unique`` hashes, which for a few thousand uint64 values costs
about 20 times a sort; these do the same work by sorting.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unique_sorted", "last_of_each"]


def unique_sorted(a: np.ndarray) -> np.ndarray:
    """The distinct values of ``a``, ascending (like ``np.unique(a)``)."""
    s = np.sort(a)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def last_of_each(keys: np.ndarray) -> np.ndarray:
    """Indices into ``keys`` of the last occurrence of each distinct key, ascending."""
    if len(keys) < 2:
        return np.arange(len(keys))
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    last = np.empty(len(keys), dtype=bool)
    last[-1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
    keep = order[last]
    keep.sort()
    return keep
