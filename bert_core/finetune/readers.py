"""Read labelled examples from Parquet, CSV/TSV or CoNLL files; the format comes from the extension.

* ``.parquet``/``.pq``: named columns. For the token task the text and label columns are
  ``list<string>`` (words and tags) or strings split on whitespace.
* ``.csv``: RFC 4180 (quoted fields may hold commas and newlines). ``.tsv``/``.tab``: IANA
  tab-separated values, no quoting (the GLUE convention: a ``"`` is an ordinary character).
* ``.txt``/``.conll``/``.iob``/``.bio``: CoNLL, token task only.

A trailing ``.gz`` is decompressed. Every mistake is an :class:`InputError` naming the file
and the column or row at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.conll import read_conll
from bertflow.bert_core.finetune.examples import Examples, TaggedExamples, TextExamples

Format = Literal["parquet", "csv", "tsv", "conll"]

_FORMATS: dict[str, Format] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "conll",
    ".conll": "conll",
    ".iob": "conll",
    ".bio": "conll",
}


def detect_format(path: str | Path) -> Format:
    """The file format from the extension (ignoring a trailing ``.gz``)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in _FORMATS:
        known = ", ".join(sorted(_FORMATS))
        raise InputError(f"{p}: cannot tell the format from the extension {ext or '(none)'!r}; use one of {known}")
    return _FORMATS[ext]


def read_examples(
    path: str | Path,
    task: Literal["sequence", "token"],
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    conll_tag_field: int = -1,
    role: str = "training",
) -> Examples:
    """Read a labelled file for ``task``; ``role`` ("training", "validation") names it in errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{role} file {p} not found (check finetune.train_path / finetune.valid_path)")
    fmt = detect_format(p)
    if fmt == "conll":
        if task != "token":
            raise InputError(
                f"{role} file {p} is CoNLL (token tags); set finetune.task: token, or give a CSV/Parquet file"
            )
        if text_pair_column:
            raise InputError(f"{role} file {p}: text_pair_column is for sequence classification only")
        examples = read_conll(p, conll_tag_field)
        if len(examples) == 0:
            raise InputError(f"{role} file {p} holds no sentences")
        return examples
    table = _read_table(p, fmt, [text_column, label_column] + ([text_pair_column] if text_pair_column else []), role)
    if len(table) == 0:
        raise InputError(f"{role} file {p} holds no rows")
    if task == "token":
        if text_pair_column:
            raise InputError(f"{role} file {p}: text_pair_column is for sequence classification only")
        return _tagged_from_columns(p, table, text_column, label_column)
    texts = _string_column(p, table, text_column, allow_null=True)
    labels = _label_column(p, table, label_column)
    pairs = _string_column(p, table, text_pair_column, allow_null=True) if text_pair_column else None
    return TextExamples(texts, labels, pairs)


def _read_table(p: Path, fmt: Format, columns: list[str], role: str):
    import pyarrow as pa

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(p).names
            _check_columns(p, names, columns, role)
            return pq.read_table(p, columns=columns)
        import pyarrow.csv as pacsv

        parse = pacsv.ParseOptions(
            delimiter="," if fmt == "csv" else "\t",
            quote_char='"' if fmt == "csv" else False,
            newlines_in_values=fmt == "csv",
        )
        # Every named column is read as text: labels "0"/"1" must not become ints in one file
        # and strings in another, and ids with leading zeros must survive.
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False)
        table = pacsv.read_csv(p, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InputError(f"{role} file {p} cannot be read as {fmt.upper()}: {exc}") from None
    _check_columns(p, table.column_names, columns, role)
    return table.select(columns)


def _check_columns(p: Path, available: list[str], wanted: list[str], role: str) -> None:
    for col in wanted:
        if col not in available:
            raise InputError(
                f"{role} file {p} has no column {col!r}; available columns: {', '.join(map(repr, available))} "
                "(set finetune.text_column / label_column / text_pair_column)"
            )
        if available.count(col) > 1:  # which one is meant cannot be known: never pick one silently
            raise InputError(f"{role} file {p} has {available.count(col)} columns named {col!r}; rename them")


def _string_column(p: Path, table, name: str, allow_null: bool) -> list[str]:
    values = table.column(name).to_pylist()
    out = []
    for row, v in enumerate(values):
        if v is None:
            if not allow_null:
                raise InputError(f"{p}: column {name!r} is empty at row {row}")
            v = ""
        out.append(v if isinstance(v, str) else str(v))
    return out


def _label_column(p: Path, table, name: str) -> list[str]:
    out = []
    for row, v in enumerate(table.column(name).to_pylist()):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise InputError(f"{p}: label column {name!r} is empty at row {row}; every row needs a label")
        out.append(v.strip() if isinstance(v, str) else str(v))
    return out


def _tagged_from_columns(p: Path, table, text_column: str, label_column: str) -> TaggedExamples:
    words = [_as_tokens(p, text_column, row, v) for row, v in enumerate(table.column(text_column).to_pylist())]
    tags = [_as_tokens(p, label_column, row, v) for row, v in enumerate(table.column(label_column).to_pylist())]
    for row, (w, t) in enumerate(zip(words, tags)):
        if len(w) != len(t):
            raise InputError(
                f"{p}: row {row} has {len(w)} words in {text_column!r} but {len(t)} tags in {label_column!r}; "
                "the token task needs exactly one tag per word"
            )
    return TaggedExamples(words, tags)


def _as_tokens(p: Path, column: str, row: int, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        if any(x is None for x in value):
            raise InputError(f"{p}: column {column!r} has a null entry in row {row}")
        return [str(x) for x in value]
    raise InputError(f"{p}: column {column!r} must hold lists of strings or whitespace-separated strings (row {row})")
