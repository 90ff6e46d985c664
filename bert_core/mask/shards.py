"""Interleave the work units' shuffled parts into the final shards (a global shuffle, in bounded memory).

Each part (one unit, one dupe) is already in random order. The output is a uniformly
random interleaving of the parts: output shard ``k`` takes its share of every part by
sequential multivariate-hypergeometric sampling (as if one dealt all rows out in a
uniformly random order) as contiguous slices of the memory-mapped parts, and interleaves
them in a random order that keeps each part's rows in sequence. A random interleaving of
uniformly shuffled parts is a uniformly random permutation of all rows. Shards are
written row group by row group, so only the slices' pages and one row group are in
memory. The plan is made from the seed and the part sizes alone: worker-independent.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.mask.memory import release_freed_memory

SHARD_NAME = "shard-{:05d}.parquet"


@dataclass(frozen=True)
class ShardJob:
    index: int
    parts_dir: str
    slices: tuple[tuple[str, int, int], ...]  # (part file, first row, rows)
    out_path: str
    seed: tuple[int, ...]
    row_group_rows: int
    compression: str


def plan_shards(parts: list[tuple[str, int]], rows_per_shard: int, seed: int, parts_dir: str, out_dir: str,
                row_group_rows: int, compression: str) -> list[ShardJob]:
    """Which slices of which parts make each output shard."""
    remaining = np.asarray([rows for _, rows in parts], dtype=np.int64)
    used = np.zeros_like(remaining)
    total = int(remaining.sum())
    rng = np.random.default_rng([seed, 0x5EED])
    jobs = []
    for k in range(-(-total // rows_per_shard)):
        take = min(rows_per_shard, int(remaining.sum()))
        if len(parts) == 1:
            draw = np.asarray([take], dtype=np.int64)
        else:
            draw = rng.multivariate_hypergeometric(remaining, take)
        slices = tuple((parts[p][0], int(used[p]), int(draw[p])) for p in np.flatnonzero(draw))
        used += draw
        remaining -= draw
        jobs.append(ShardJob(k, parts_dir, slices, str(Path(out_dir) / SHARD_NAME.format(k)), (seed, 0x5EED, k),
                             row_group_rows, compression))
    return jobs


def _interleaving(counts: list[int], rng: np.random.Generator) -> np.ndarray:
    """Row order over concatenated slices: a random interleaving, each slice's rows kept in sequence."""
    counts_arr = np.asarray(counts, dtype=np.int64)
    labels = np.repeat(np.arange(len(counts_arr)), counts_arr)
    rng.shuffle(labels)
    # sorted stably by label, output rows line up with the concatenation: the j-th occurrence
    # of label p is concatenated row (rows before slice p) + j
    order = np.empty(len(labels), dtype=np.int64)
    order[np.argsort(labels, kind="stable")] = np.arange(len(labels), dtype=np.int64)
    return order


def _gather(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` for a few rows of a many-chunk table, copying only those rows.

    (``take`` on a chunked list column would first concatenate the whole column.) The rows
    form a few contiguous runs, since each slice is consumed in sequence.
    """
    ordered = np.sort(rows)
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    starts = ordered[np.concatenate([[0], breaks])]
    ends = ordered[np.concatenate([breaks - 1, [len(ordered) - 1]])] + 1
    runs = pa.concat_tables([table.slice(int(a), int(b - a)) for a, b in zip(starts, ends)]).combine_chunks()
    return runs.take(pa.array(np.searchsorted(ordered, rows)))


def write_shard(job: ShardJob) -> tuple[str, int]:
    """Gather the slices, interleave them, write one Parquet shard; returns ``(file name, rows)``.

    The parts are memory-mapped; after each row group their pages are dropped from this
    process (``MADV_DONTNEED``: they stay in the page cache and fault back in if needed),
    so the resident set holds about one row group, not the whole shard's source pages.
    """
    maps: list[mmap.mmap] = []
    try:
        tables = []
        for name, start, rows in job.slices:
            with open(Path(job.parts_dir) / name, "rb") as fh:
                maps.append(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
            tables.append(pa.ipc.open_file(pa.BufferReader(pa.py_buffer(maps[-1]))).read_all().slice(start, rows))
        table = pa.concat_tables(tables)
        del tables
        order = _interleaving([rows for _, _, rows in job.slices], np.random.default_rng(list(job.seed)))
        compression = None if job.compression == "none" else job.compression
        with pq.ParquetWriter(job.out_path, table.schema, compression=compression, use_dictionary=False,
                              write_statistics=False) as writer:
            for a in range(0, len(order), job.row_group_rows):
                writer.write_table(_gather(table, order[a:a + job.row_group_rows]), row_group_size=job.row_group_rows)
                _drop_pages(maps)
        return Path(job.out_path).name, table.num_rows
    finally:
        table = None  # release the buffers over the maps before they are unmapped
        for m in maps:
            _close(m)
        release_freed_memory()


def _drop_pages(maps: list[mmap.mmap]) -> None:
    if hasattr(mmap, "MADV_DONTNEED"):
        for m in maps:
            m.madvise(mmap.MADV_DONTNEED)


def _close(m: mmap.mmap) -> None:
    try:
        m.close()
    except BufferError:  # still exported to a live Arrow buffer: the garbage collector unmaps it later
        pass
