"""The corpus format that ingestion writes and vocab / masked-data generation read.

A corpus directory holds ``shard-00000.parquet`` ... and ``manifest.json``. Every
shard has exactly these columns:

- ``doc_id``: string, a stable content hash of the cleaned text (hex)
- ``source``: string, the input file the document came from
- ``text``: string, the cleaned document text
- ``n_chars``: int32, ``len(text)``
- ``sent_starts``: list<int32>, character offsets where sentences begin (first is 0);
  the NSP recipe of masked-data generation splits documents there.
"""

import pyarrow as pa

CORPUS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_chars", pa.int32(), nullable=False),
        pa.field("sent_starts", pa.list_(pa.int32()), nullable=False),
    ]
)
SHARD_GLOB = "shard-*.parquet"
