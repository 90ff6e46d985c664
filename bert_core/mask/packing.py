"""The ``full`` recipe (RoBERTa): documents packed into ``[CLS] text [SEP]`` rows, no NSP.

``full_mode``:
- ``full_sentences``: the unit's documents form one stream with a ``[SEP]`` between
  documents, and rows may cross document boundaries;
- ``doc_sentences``: rows never cross a document boundary (a document's last row may be
  short).

``full_packing``:
- ``sentences`` (RoBERTa's FULL-SENTENCES / DOC-SENTENCES, fairseq ``--sample-break-mode
  complete``): each row holds whole consecutive sentences, as many as fit in
  ``max_seq_length - 2`` tokens; only a sentence longer than that is cut (into full rows
  and a remainder that opens the next row);
- ``tokens`` (Hugging Face ``group_texts``): every row is exactly ``max_seq_length``
  tokens of the stream, cut anywhere; a unit's (or, in ``doc_sentences``, a document's)
  last row may be short.

Rows are contiguous spans of the stream, so assembling them is one gather
(:func:`bert_core.mask.sequences.assemble`).
"""

from __future__ import annotations

import numpy as np

from bertflow.bert_core.mask.encode import EncodedDocs
from bertflow.bert_core.mask.sequences import Sequences, assemble, ranges_to_indices


def pack_full(enc: EncodedDocs, keep: np.ndarray, max_seq_length: int, cls_id: int, sep_id: int,
              cross_documents: bool, by_sentences: bool) -> Sequences:
    """Rows of the ``full`` recipe from the kept documents (``keep``: bool per document)."""
    cap = max_seq_length - 2
    docs = np.flatnonzero(keep)
    doc_start, doc_end = enc.doc_offsets[docs], enc.doc_offsets[docs + 1]
    if cross_documents:
        # the stream: kept documents with one [SEP] between neighbours
        seps = len(docs) - 1
        ext = np.concatenate([enc.ids, np.asarray([sep_id], dtype=enc.ids.dtype)])
        starts = np.empty(len(docs) + max(seps, 0), dtype=np.int64)
        lengths = np.empty_like(starts)
        starts[0::2], lengths[0::2] = doc_start, doc_end - doc_start
        starts[1::2], lengths[1::2] = len(enc.ids), 1
        stream = ext[ranges_to_indices(starts, lengths)]
        stream_doc_start = np.concatenate([[0], np.cumsum(lengths)[1::2]]) if len(docs) else np.zeros(0, np.int64)
    else:
        stream = enc.ids
        stream_doc_start = doc_start
    if by_sentences:
        row_start, row_end = _sentence_rows(enc, docs, stream_doc_start, cap, cross_documents)
    else:
        row_start, row_end = _token_rows(stream_doc_start, doc_end - doc_start, len(stream), cap, cross_documents)
    return assemble(stream, cls_id, sep_id, row_start, row_end)


def _token_rows(doc_start, doc_len, stream_len: int, cap: int, cross_documents: bool):
    if cross_documents:
        starts = np.arange(0, stream_len, cap, dtype=np.int64)
        return starts, np.minimum(starts + cap, stream_len)
    n_rows = -(-doc_len // cap)
    first = np.repeat(doc_start, n_rows)
    within = np.arange(int(n_rows.sum()), dtype=np.int64) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    starts = first + within * cap
    return starts, np.minimum(starts + cap, np.repeat(doc_start + doc_len, n_rows))


def _sentence_rows(enc: EncodedDocs, docs: np.ndarray, stream_doc_start: np.ndarray, cap: int,
                   cross_documents: bool):
    """Greedy rows of whole sentences (in stream coordinates)."""
    row_s: list[int] = []
    row_e: list[int] = []
    cur_s = cur_e = -1
    sent_s, sent_e, doc_sent = enc.sent_starts, enc.sent_ends, enc.doc_sent_offsets
    for k, d in enumerate(docs.tolist()):
        shift = int(stream_doc_start[k] - enc.doc_offsets[d])
        if k > 0:
            if cross_documents and cur_s >= 0 and cur_e - cur_s < cap:
                cur_e += 1  # the [SEP] between documents joins the row
            elif cur_s >= 0:
                row_s.append(cur_s)
                row_e.append(cur_e)
                cur_s = -1
        a, b = int(doc_sent[d]), int(doc_sent[d + 1])
        for s, e in zip((sent_s[a:b] + shift).tolist(), (sent_e[a:b] + shift).tolist()):
            n = e - s
            if n <= 0:
                continue
            if cur_s >= 0 and cur_e == s and cur_e - cur_s + n <= cap:
                cur_e = e
                continue
            if cur_s >= 0:
                row_s.append(cur_s)
                row_e.append(cur_e)
            while n > cap:  # a sentence longer than a row: full rows, then the rest opens a row
                row_s.append(s)
                row_e.append(s + cap)
                s += cap
                n -= cap
            cur_s, cur_e = s, e
    if cur_s >= 0:
        row_s.append(cur_s)
        row_e.append(cur_e)
    return np.asarray(row_s, dtype=np.int64), np.asarray(row_e, dtype=np.int64)
