"""The masked-data format that generation writes and pretraining reads.

A masked-data directory holds ``shard-00000.parquet`` ... and ``manifest.json``.
Rows are sequences, already shuffled at generation time (pretraining reads them in
order, so a (shard, row) offset is an O(1) resume position). Columns:

- ``input_ids``: list<uint16> (list<uint32> when the vocab exceeds 65,536), unpadded,
  ``[CLS] ... [SEP]`` (nsp: ``[CLS] A [SEP] B [SEP]``); in static mode masks applied
- ``token_type_ids``: list<uint8>, same length (all 0 for ``full``)
- static mode only: ``masked_positions`` list<uint16> (ascending) and ``masked_ids``
  (original token ids at those positions; same int type as ``input_ids``)
- nsp only: ``next_sentence_label`` int8 (1 = B is a random segment, 0 = true next)

``manifest.json`` keys used by readers: ``recipe``, ``masking``, ``max_seq_length``,
``vocab_size``, ``special_ids`` (``pad``, ``cls``, ``sep``, ``mask``, ``unk``),
``num_rows``, ``num_tokens``, ``shards`` (list of ``{"file": ..., "rows": ...}`` in
read order), ``masked_lm_prob``, ``max_predictions_per_seq``, ``whole_word``,
``tokenizer_fingerprint``, ``corpus_fingerprint``, ``seed``, ``config``.

Added keys (backwards compatible): ``continuation_ids`` (only when ``whole_word``: the ids
of ``##`` pieces, so dynamic whole-word masking needs no tokenizer), ``id_type``
(``"uint16"``/``"uint32"``), ``num_masked_tokens``, ``dupe_factor``, ``full_mode`` and
``full_packing`` (``full`` only, else null), ``counts`` (documents read and skipped, source
tokens, NSP label counts, work units) and ``warnings``.

Row groups hold ``config.row_group_rows`` rows (4,096 by default): the reader's read and
seek granularity.
"""

SHARD_GLOB = "shard-*.parquet"


def shard_schema(id_type: str, recipe: str, masking: str):
    """The Arrow schema of a shard: ``id_type`` is ``"uint16"`` or ``"uint32"``."""
    import pyarrow as pa

    ids = pa.list_(pa.field("item", pa.from_numpy_dtype(id_type), nullable=False))
    fields = [
        pa.field("input_ids", ids, nullable=False),
        pa.field("token_type_ids", pa.list_(pa.field("item", pa.uint8(), nullable=False)), nullable=False),
    ]
    if masking == "static":
        fields.append(pa.field("masked_positions", pa.list_(pa.field("item", pa.uint16(), nullable=False)),
                               nullable=False))
        fields.append(pa.field("masked_ids", ids, nullable=False))
    if recipe == "nsp":
        fields.append(pa.field("next_sentence_label", pa.int8(), nullable=False))
    return pa.schema(fields)
