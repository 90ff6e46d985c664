"""Bulk scoring with token-classification (NER) and extractive-QA models: entity spans, answer spans, bad rows.

References are independent of our code: transformers' token-classification pipeline for
entities, and a brute-force search over every span of transformers' own tokenizer windows
for answers.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.score.stage import run
from tests.helpers import FILLER, NAMES, PERSONS, PLACES, TOWNS, build_tiny_head, read_scored, score_cfg, write_parquet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the references' forwards too: 2 shared cores


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    return build_tiny_head(tmp_path_factory.mktemp("token-model"), "token")


@pytest.fixture(scope="module")
def token_pipeline(token_model):
    """transformers' own token-classification pipeline on the same model (the reference)."""
    from transformers import pipeline

    return pipeline("token-classification", model=str(token_model), tokenizer=str(token_model), device="cpu")


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    return build_tiny_head(tmp_path_factory.mktemp("qa-model"), "qa")


def ner_texts(n: int, seed: int, words: tuple[int, int] = (2, 10)) -> list[str]:
    """Sentences with capitalised (multi-piece) names, stray spaces, punctuation and accents."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        ws = [rng.choice(FILLER) for _ in range(rng.randint(*words))]
        for _ in range(2):
            ws.insert(rng.randint(0, len(ws)), " ".join(rng.choice(PERSONS + PLACES)).title())
        if rng.random() < 0.2:
            ws.insert(rng.randint(0, len(ws)), "Café")
        texts.append(("  " if rng.random() < 0.2 else "") + " ".join(ws) + rng.choice([".", "!", " ?", ""]))
    return texts


# ------------------------------------------------------------------------------------------------ token head
@pytest.mark.parametrize("aggregation", ["simple", "first", "max", "average"])
def test_entities_equal_the_transformers_pipeline(token_model, token_pipeline, tmp_path, aggregation):
    texts = ner_texts(60, seed=1)
    rows = texts + [None, "   "]
    write_parquet(tmp_path / "in.parquet", {"id": list(range(len(rows))), "text": rows})
    result = run(score_cfg(tmp_path / "in.parquet", max_length=64, aggregation=aggregation, tokens=True), token_model,
                 tmp_path / "out")
    out = read_scored(tmp_path / "out").sort_by("id").to_pylist()
    assert [r["id"] for r in out] == list(range(len(rows)))  # rows in = rows out
    reference = [[(e["entity_group"], e["start"], e["end"], float(e["score"])) for e in found]
                 for found in token_pipeline(texts, aggregation_strategy=aggregation)]
    spans = 0
    for text, row, ref in zip(texts, out, reference):
        got = [(e["label"], e["start"], e["end"]) for e in row["entities"]]
        assert got == [r[:3] for r in ref], text
        np.testing.assert_allclose([e["score"] for e in row["entities"]], [r[3] for r in ref], atol=1e-5)
        assert all(e["text"] == text[e["start"]:e["end"]] for e in row["entities"])  # offsets into the original
        assert len(row["tokens"]) == len(row["tags"]) and row["error"] is None
        spans += len(got)
    assert spans > 100 and {e["label"] for r in out[:60] for e in r["entities"]} == {"PER", "LOC"}
    assert [(r["error"], r["entities"]) for r in out[60:]] == [("null_text", None), ("empty_text", None)]
    assert result.metrics["rows_scored"] == 60 and result.metrics["rows_error"] == 2


def test_long_texts_are_windowed_and_merged_not_truncated(tmp_path):
    """A context-free model predicts each token alone: windows of 32 tokens must give what one window gives."""
    model = build_tiny_head(tmp_path / "model", "token", positions=512, context_free=True)
    texts = ner_texts(6, seed=2, words=(150, 200))  # ~250-300 tokens each: 9+ windows of 32
    write_parquet(tmp_path / "in.parquet", {"id": list(range(6)), "text": texts})
    whole = run(score_cfg(tmp_path / "in.parquet", max_length=512, batch_size=2), model, tmp_path / "whole")
    assert whole.metrics["rows_truncated"] == 0
    for stride in (0, 7, 16):
        out = tmp_path / f"windows-{stride}"
        result = run(score_cfg(tmp_path / "in.parquet", max_length=32, stride=stride), model, out)
        assert result.metrics["rows_truncated"] == 0 and result.metrics["rows_scored"] == 6
        a = read_scored(out).sort_by("id")["entities"].to_pylist()
        b = read_scored(tmp_path / "whole").sort_by("id")["entities"].to_pylist()
        assert [[(e["label"], e["start"], e["end"]) for e in r] for r in a] == \
               [[(e["label"], e["start"], e["end"]) for e in r] for r in b]
        assert max(e["end"] for r in a for e in r) > 800  # entities far past the first window are found
    # A row needing more than max_windows windows is cut there and flagged.
    cut = run(score_cfg(tmp_path / "in.parquet", max_length=32, stride=8, max_windows=2), model, tmp_path / "cut")
    rows = read_scored(tmp_path / "cut").to_pylist()
    assert cut.metrics["rows_truncated"] == 6 and all(r["error"] == "truncated" for r in rows)
    assert max(e["end"] for r in rows for e in r["entities"]) < 500 < min(len(t) for t in texts)


def test_token_model_with_a_merged_window_matches_the_pipeline_with_stride(tmp_path):
    """Both window a long text with the same tokenizer; on a context-free model their spans agree."""
    from transformers import AutoTokenizer, pipeline

    model = build_tiny_head(tmp_path / "model", "token", positions=512, context_free=True)
    texts = ner_texts(4, seed=3, words=(60, 80))
    write_parquet(tmp_path / "in.parquet", {"id": list(range(4)), "text": texts})
    run(score_cfg(tmp_path / "in.parquet", max_length=32, stride=12), model, tmp_path / "out")
    ours = read_scored(tmp_path / "out").sort_by("id")["entities"].to_pylist()
    tok = AutoTokenizer.from_pretrained(model, model_max_length=32)
    pipe = pipeline("token-classification", model=str(model), tokenizer=tok, aggregation_strategy="simple",
                    stride=12, device="cpu")
    theirs = [[(e["entity_group"], e["start"], e["end"]) for e in found] for found in pipe(texts)]
    same = sum(a == b for r, t in zip(ours, theirs) for a, b in
               zip(sorted((e["label"], e["start"], e["end"]) for e in r), sorted(t)))
    total = sum(len(t) for t in theirs)
    assert total > 40 and same / total >= 0.9  # the pipeline groups each window apart and may cut at its edges


# ------------------------------------------------------------------------------------------------ qa head
def qa_rows(n: int, seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    questions = [" ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 8))) + "?" for _ in range(n)]
    contexts = []
    for _ in range(n):
        ws = [rng.choice(FILLER) for _ in range(rng.randint(3, 70))]
        ws.insert(rng.randint(0, len(ws)), f"{rng.choice(NAMES).title()} lived in {rng.choice(TOWNS).title()}")
        contexts.append(" ".join(ws) + ".")
    return questions, contexts


def brute_force_answer(tok, model, question: str, context: str, max_length: int, stride: int, longest: int):
    """The best (start, end) character span over every window of transformers' tokenizer and every token pair."""
    enc = tok(question, context, truncation="only_second", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    enc.pop("overflow_to_sample_mapping")
    with torch.no_grad():
        out = model(**enc)
    best, span = -np.inf, None
    for w in range(len(offsets)):
        seq = enc.sequence_ids(w)
        s, e = out.start_logits[w].numpy(), out.end_logits[w].numpy()
        for a in (i for i, x in enumerate(seq) if x == 1):
            for b in range(a, min(a + longest, len(seq))):
                if seq[b] == 1 and s[a] + e[b] > best:
                    best, span = s[a] + e[b], (int(offsets[w][a][0]), int(offsets[w][b][1]))
    return span


def test_qa_answers_equal_a_brute_force_search_and_bad_rows_are_errors(qa_model, tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    questions, contexts = qa_rows(40, seed=4)
    questions[3], contexts[5], contexts[7], questions[9] = None, "  ", None, ""
    ids = list(range(40))
    write_parquet(tmp_path / "a.parquet", {"id": ids, "question": questions, "context": contexts})
    write_parquet(tmp_path / "b.parquet", {"id": [100], "question": ["who?"], "context": pa.array([3], pa.int64())})
    result = run(score_cfg(tmp_path, max_length=48, stride=8, max_answer_length=10), qa_model, tmp_path / "out")
    out = read_scored(tmp_path / "out").sort_by("id").to_pylist()
    assert [r["id"] for r in out] == ids + [100]  # rows in = rows out
    tok = AutoTokenizer.from_pretrained(qa_model)
    model = AutoModelForQuestionAnswering.from_pretrained(qa_model).eval()
    windows = 0
    for q, c, row in zip(questions, contexts, out):
        if q is None or not q or c is None or not c.strip():
            assert row["answer"] is None and row["score"] is None and row["error"] in (
                "null_question", "empty_question", "null_context", "empty_context")
            continue
        start, end = brute_force_answer(tok, model, q, c, 48, 8, 10)
        assert (row["answer_start"], row["answer_end"]) == (start, end), row
        assert row["answer"] == c[start:end] and 0 < row["score"] <= 1 and row["error"] is None
        windows += len(tok(q, c, truncation="only_second", max_length=48, stride=8,
                           return_overflowing_tokens=True)["input_ids"])
    assert windows > 60  # long contexts took several windows
    assert out[-1]["error"] == "not_text:int64" and out[-1]["answer"] is None
    assert [out[i]["error"] for i in (3, 5, 7, 9)] == ["null_question", "empty_context", "null_context",
                                                        "empty_question"]
    m = result.metrics
    assert m["rows_in"] == 41 == m["rows_scored"] + m["rows_error"] and m["rows_error"] == 5


def test_qa_no_answer_threshold_from_the_model_or_the_config(qa_model, tmp_path):
    import shutil

    questions, contexts = qa_rows(12, seed=5)
    write_parquet(tmp_path / "in.parquet", {"question": questions, "context": contexts})
    v2 = shutil.copytree(qa_model, tmp_path / "v2")
    (v2 / "bertflow_finetune.json").write_text(json.dumps(
        {"task": "qa", "max_length": 48, "version_2_with_negative": True, "null_threshold": -1e9}))
    run(score_cfg(tmp_path / "in.parquet", max_length=48, stride=8), v2, tmp_path / "none")
    none = read_scored(tmp_path / "none").to_pylist()
    assert all(r["answer"] is None and r["answer_start"] is None and 0 < r["score"] <= 1 and r["error"] is None
               for r in none)  # below the threshold: scored, no answer, the no-answer probability as score
    run(score_cfg(tmp_path / "in.parquet", max_length=48, stride=8, null_threshold=1e9), v2, tmp_path / "all")
    assert all(r["answer"] for r in read_scored(tmp_path / "all").to_pylist())
    run(score_cfg(tmp_path / "in.parquet", max_length=48, stride=8), qa_model, tmp_path / "v1")  # no v2 marker
    assert all(r["answer"] for r in read_scored(tmp_path / "v1").to_pylist())



def test_qa_batches_capped_in_tokens_pad_less_and_answer_the_same(qa_model, tmp_path):
    questions, contexts = qa_rows(30, seed=6)
    write_parquet(tmp_path / "in.parquet", {"id": list(range(30)), "question": questions, "context": contexts})
    runs = {}
    for cap in (0, 96):  # 96 tokens: two windows of 48 (or three shorter ones) per forward pass
        result = run(score_cfg(tmp_path / "in.parquet", max_length=48, stride=8, batch_size=64, max_batch_tokens=cap),
                     qa_model, tmp_path / f"out-{cap}")
        manifest = json.loads((tmp_path / f"out-{cap}" / "manifest.json").read_text())
        runs[cap] = (read_scored(tmp_path / f"out-{cap}").sort_by("id").to_pylist(), manifest["padding_efficiency"])
        assert result.metrics["rows_scored"] == 30
    (plain, plain_eff), (capped, capped_eff) = runs[0], runs[96]
    assert [(r["answer_start"], r["answer_end"]) for r in capped] == [(r["answer_start"], r["answer_end"])
                                                                      for r in plain]
    assert np.allclose([r["score"] for r in capped], [r["score"] for r in plain], atol=1e-5)
    assert capped_eff > plain_eff  # fewer pad tokens behind each batch's longest window

# ------------------------------------------------------------------------------------------------ heads and errors
def test_head_is_detected_and_wrong_settings_are_clear_errors(token_model, qa_model, tiny_model, tmp_path):
    write_parquet(tmp_path / "qa.parquet", {"question": ["who?"], "context": ["alice lived in paris."],
                                            "answer": ["alice"]})
    with pytest.raises(InputError, match="'answer' clashes with an output column"):
        run(score_cfg(tmp_path / "qa.parquet", max_length=48, stride=8), qa_model, tmp_path / "o1")
    run(score_cfg(tmp_path / "qa.parquet", max_length=48, stride=8, output_prefix="pred_"), qa_model, tmp_path / "o2")
    row = read_scored(tmp_path / "o2").to_pylist()[0]
    assert row["answer"] == "alice" and row["pred_answer"] is not None and "pred_answer_start" in row
    with pytest.raises(InputError, match="no column 'question'"):
        write_parquet(tmp_path / "text.parquet", {"text": ["alice lived in paris"]})
        run(score_cfg(tmp_path / "text.parquet", max_length=48, stride=8), qa_model, tmp_path / "o3")
    with pytest.raises(InputError, match="no trained qa head"):
        run(score_cfg(tmp_path / "qa.parquet", head="qa", max_length=48, stride=8, output_prefix="p_"), token_model,
            tmp_path / "o4")
    with pytest.raises(InputError, match="score.tokens and score.aggregation are for token models"):
        run(score_cfg(tmp_path / "text.parquet", tokens=True), tiny_model, tmp_path / "o5")
    with pytest.raises(InputError, match="score.probabilities"):
        run(score_cfg(tmp_path / "text.parquet", probabilities=True, stride=8), token_model, tmp_path / "o6")
    with pytest.raises(InputError, match="stride"):
        run(score_cfg(tmp_path / "text.parquet", stride=30), token_model, tmp_path / "o7")
    with pytest.raises(InputError, match="stride 32 leaves no room"):
        run(score_cfg(tmp_path / "qa.parquet", output_prefix="p_"), qa_model, tmp_path / "o7b")
    run(score_cfg(tmp_path / "text.parquet", stride=8), token_model, tmp_path / "o8")
    out = read_scored(tmp_path / "o8")
    assert out.schema.field("entities").type == pa.list_(pa.struct([
        ("label", pa.string()), ("start", pa.int32()), ("end", pa.int32()), ("text", pa.string()),
        ("score", pa.float32())]))
    assert out.column_names == ["entities", "model_uri", "model_version", "error"]


def test_entities_column_reads_back_in_duckdb(token_model, tmp_path):
    import duckdb

    texts = ner_texts(30, seed=6)
    write_parquet(tmp_path / "lake" / "part-0.parquet", {"id": list(range(30)), "text": texts})
    run(score_cfg(tmp_path / "lake", stride=8), token_model, tmp_path / "out")
    top = duckdb.sql(f"""
        SELECT e.label, lower(e.text) AS entity, count(*) AS n
        FROM read_parquet('{tmp_path}/out/**/*.parquet', hive_partitioning = true), unnest(entities) AS u(e)
        WHERE e.label = 'PER' GROUP BY ALL ORDER BY n DESC, entity LIMIT 3""").fetchall()
    flat = [e for r in read_scored(tmp_path / "out").to_pylist() for e in r["entities"] if e["label"] == "PER"]
    assert top and top[0][2] == max(sum(1 for f in flat if f["text"].lower() == t) for t in {f["text"].lower()
                                                                                              for f in flat})
