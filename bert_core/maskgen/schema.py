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
"""

SHARD_GLOB = "shard-*.parquet"
