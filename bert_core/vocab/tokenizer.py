"""A BERT WordPiece tokenizer: built with ``tokenizers``, saved as a Hugging Face tokenizer directory.

Special tokens and their ids (the first ids of every vocabulary this stage builds):
``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4 (the order of
``transformers.BertTokenizer``'s default vocabulary; ``[PAD]`` = 0 so zero-filled tensors
are padding). Pipeline: ``BertNormalizer`` (clean text, CJK spacing, lowercase and
accent stripping when ``lowercase``) -> ``BertPreTokenizer`` -> WordPiece (``##``
continuation prefix) -> ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` post-processing
(token type 1 for B) -> WordPiece decoder.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertflow.bert_core.stageio import atomic_write_bytes

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS
CONTINUATION = "##"
MAX_CHARS_PER_WORD = 100  # longer words become [UNK], as in BERT


def new_tokenizer(lowercase: bool, vocab: dict[str, int] | None = None) -> Tokenizer:
    """An (untrained, or ``vocab``-loaded) BERT WordPiece tokenizer."""
    model = models.WordPiece(
        vocab=vocab or {},
        unk_token=UNK,
        continuing_subword_prefix=CONTINUATION,
        max_input_chars_per_word=MAX_CHARS_PER_WORD,
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if vocab:
        finish(tok, standard_ids=False)
    return tok


def from_vocab_file(vocab_txt: str | Path, lowercase: bool) -> Tokenizer:
    """Our pipeline around an existing ``vocab.txt`` (one token per line, id = line number)."""
    lines = Path(vocab_txt).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return new_tokenizer(lowercase, {tok: i for i, tok in enumerate(lines)})


def wordpiece_trainer(vocab_size: int, min_frequency: int, limit_alphabet: int) -> trainers.WordPieceTrainer:
    return trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=limit_alphabet,
        initial_alphabet=[],
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=CONTINUATION,
        show_progress=False,
    )


def canonical_ids(tok: Tokenizer) -> Tokenizer:
    """Renumber a trained vocabulary so ids depend only on the token set.

    The trainer gives the ``##`` continuation characters ids in hash-map order, so the
    same data yields different ids run to run (huggingface/tokenizers#1794; on count ties
    even a slightly different token set). Order here: special tokens (0..4), single
    characters, ``##`` + single characters, then every other token, each group sorted.
    """
    vocab = tok.get_vocab(with_added_tokens=False)
    rest = [t for t in vocab if t not in SPECIAL_TOKENS]

    def group(t: str) -> int:
        if len(t) == 1:
            return 0
        if t.startswith(CONTINUATION) and len(t) == len(CONTINUATION) + 1:
            return 1
        return 2

    ordered = [*SPECIAL_TOKENS, *sorted(rest, key=lambda t: (group(t), t))]
    tok.model = models.WordPiece(
        vocab={t: i for i, t in enumerate(ordered)},
        unk_token=UNK,
        continuing_subword_prefix=CONTINUATION,
        max_input_chars_per_word=MAX_CHARS_PER_WORD,
    )
    return tok


def finish(tok: Tokenizer, standard_ids: bool = True) -> Tokenizer:
    """Add BERT's post-processor and decoder; check the special tokens (and, for our own
    vocabularies, that they have ids 0..4; an external vocab such as Google BERT's keeps its own)."""
    for expected, token in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(token)
        if got is None or (standard_ids and got != expected):
            raise ValueError(f"special token {token} has id {got}, expected {expected if standard_ids else 'an id'}")
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION)
    return tok


def save_hf_dir(tok: Tokenizer, directory: str | Path, lowercase: bool, model_max_length: int) -> None:
    """Write tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json.

    Loads with ``AutoTokenizer`` / ``BertTokenizerFast`` (tokenizer.json) and with the
    pure-Python ``BertTokenizer`` (vocab.txt + do_lower_case).
    """
    d = Path(directory)
    tok.save(str(d / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("vocabulary ids are not contiguous")
    atomic_write_bytes(d / "vocab.txt", "".join(f"{t}\n" for t, _ in by_id).encode("utf-8"))
    specials = {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK}
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "do_basic_tokenize": True,
        "never_split": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        **specials,
    }
    _write_json(d / "tokenizer_config.json", config)
    _write_json(d / "special_tokens_map.json", specials)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
