"""Arrow string columns holding bytes that are not UTF-8.

Parquet does not check that a string column's bytes are UTF-8, so a broken writer can
leave such cells behind. Arrow's own kernels (and ``to_pylist``) fail on them, so the
stages find them first: ingestion replaces the bad bytes (counted), scoring flags the rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def is_valid_utf8(col: pa.Array) -> bool:
    """Every cell is UTF-8 (checked at C speed: the usual, cheap case)."""
    try:
        col.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def invalid_utf8_rows(col: pa.Array) -> np.ndarray | None:
    """A bool mask of the rows whose bytes are not UTF-8, or None when all are valid."""
    if is_valid_utf8(col):
        return None
    bad = np.zeros(len(col), dtype=bool)
    for i, value in enumerate(raw_bytes(col)):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
    return bad


def raw_bytes(col: pa.Array) -> list[bytes | None]:
    """The cells of a (large_)string column as bytes, undecoded."""
    return col.view(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()).to_pylist()
