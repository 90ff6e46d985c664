"""A small, safe row-filter language, evaluated with pyarrow compute (never SQL).

Grammar (keywords case-insensitive)::

    filter  := clause ( AND clause )*
    clause  := column OP literal
             | column [NOT] IN ( literal [, literal]* )
             | column IS [NOT] NULL
    OP      := =  ==  !=  <>  <  <=  >  >=
    column  := identifier  |  "double-quoted name"
    literal := 'single-quoted string' ('' escapes a quote) | number | TRUE | FALSE

The text is tokenized and parsed here; nothing of it is ever spliced into a query.
Columns are checked against each file's schema (plus its hive partition keys) and
literals are converted to the column's type, so ``"1=1; DROP TABLE x"`` or an
unknown column is an :class:`InputError` naming the problem. A comparison with a
null is false (SQL semantics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bertflow.bert_core.errors import InputError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<qident>"[^"]+")
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|!=|<>|==|=|<|>)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE"}
_OPS = {"=": "equal", "==": "equal", "!=": "not_equal", "<>": "not_equal",
        "<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal"}


@dataclass(frozen=True)
class Clause:
    column: str
    op: str  # one of _OPS values, "in", "not_in", "is_null", "is_not_null"
    values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Filter:
    """A parsed filter: clauses joined by AND."""

    text: str
    clauses: tuple[Clause, ...]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c.column for c in self.clauses))


def parse_filter(text: str | None) -> Filter | None:
    """Parse ``text`` (None or blank: no filter); a syntax error is an InputError."""
    if text is None or not text.strip():
        return None
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    clauses = [parser.clause()]
    while not parser.done():
        word = parser.peek()
        if word == ("kw", "OR"):
            parser.fail("OR is not supported (only AND); split the job or use IN (...)")
        parser.expect_kw("AND")
        clauses.append(parser.clause())
    return Filter(text=text, clauses=tuple(clauses))


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            start = len(text[pos:]) - len(text[pos:].lstrip()) + pos
            raise InputError(f"score.filter {text!r}: unexpected {text[start]!r} at position {start} "
                             f"(allowed: column OP literal [AND ...], OP one of = != < <= > >= IN, IS [NOT] NULL)")
        kind = m.lastgroup
        raw = m.group(kind)
        start = m.start(kind)
        if kind == "string":
            tokens.append(("literal", raw[1:-1].replace("''", "'"), start))
        elif kind == "number":
            is_int = re.fullmatch(r"[-+]?\d+", raw) is not None
            tokens.append(("literal", int(raw) if is_int else float(raw), start))
        elif kind == "qident":
            tokens.append(("ident", raw[1:-1], start))
        elif kind == "ident":
            upper = raw.upper()
            if upper in ("TRUE", "FALSE"):
                tokens.append(("literal", upper == "TRUE", start))
            elif upper in _KEYWORDS:
                tokens.append(("kw", upper, start))
            else:
                tokens.append(("ident", raw, start))
        else:
            tokens.append((kind, raw, start))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list[tuple[str, Any, int]]):
        self.text, self.tokens, self.i = text, tokens, 0

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def peek(self) -> tuple[str, Any] | None:
        return None if self.done() else self.tokens[self.i][:2]

    def fail(self, what: str) -> None:
        where = f" at position {self.tokens[self.i][2]}" if not self.done() else " at the end"
        raise InputError(f"score.filter {self.text!r}: {what}{where}")

    def take(self) -> tuple[str, Any]:
        if self.done():
            self.fail("the filter ends too early")
        tok = self.tokens[self.i]
        self.i += 1
        return tok[0], tok[1]

    def expect_kw(self, word: str) -> None:
        if self.peek() != ("kw", word):
            got = self.peek()
            self.fail(f"expected {word}, got {got[1]!r}" if got else f"expected {word}")
        self.i += 1

    def literal(self) -> Any:
        if self.peek() is None or self.peek()[0] != "literal":
            got = self.peek()
            self.fail(f"expected a literal ('text', number, TRUE, FALSE), got {got[1]!r}" if got
                      else "expected a literal")
        return self.take()[1]

    def clause(self) -> Clause:
        if self.done():
            self.fail("the filter ends too early")
        kind, column = self.peek()
        if kind != "ident":
            self.fail(f"a clause must start with a column name, got {column!r}")
        self.i += 1
        kind, word = self.peek() or (None, None)
        if kind == "op":
            self.i += 1
            return Clause(column, _OPS[word], (self.literal(),))
        if (kind, word) == ("kw", "IS"):
            self.i += 1
            negate = self.peek() == ("kw", "NOT")
            if negate:
                self.i += 1
            self.expect_kw("NULL")
            return Clause(column, "is_not_null" if negate else "is_null")
        negate = (kind, word) == ("kw", "NOT")
        if negate:
            self.i += 1
        if self.peek() == ("kw", "IN"):
            self.i += 1
            if self.peek() != ("punct", "("):
                self.fail("IN must be followed by ( ... )")
            self.i += 1
            values = [self.literal()]
            while self.peek() == ("punct", ","):
                self.i += 1
                values.append(self.literal())
            if self.peek() != ("punct", ")"):
                self.fail("expected ) to close IN (...)")
            self.i += 1
            return Clause(column, "not_in" if negate else "in", tuple(values))
        self.fail(f"expected an operator (= != < <= > >= IN IS) after column {column!r}")
        raise AssertionError  # unreachable


@dataclass(frozen=True)
class BoundFilter:
    """A filter checked against one file: row clauses plus the verdict on its partition."""

    row_clauses: tuple[tuple[Clause, pa.DataType, tuple[pa.Scalar, ...]], ...]
    partition_pass: bool

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c.column for c, _, _ in self.row_clauses))

    def mask(self, batch: pa.RecordBatch) -> pa.Array:
        """Boolean selection of ``batch`` rows (null comparisons count as false)."""
        result = None
        for clause, _, scalars in self.row_clauses:
            col = batch.column(clause.column)
            if pa.types.is_dictionary(col.type):
                col = col.dictionary_decode()
            part = _evaluate(col, clause, scalars)
            result = part if result is None else pc.and_kleene(result, part)
        if result is None:
            return pa.array([True] * batch.num_rows, pa.bool_())
        return pc.fill_null(result, False)


def bind_filter(flt: Filter | None, schema: pa.Schema, partition: dict[str, str], where: str) -> BoundFilter | None:
    """Check ``flt``'s columns and literals against a file's schema and partition; InputError if unusable."""
    if flt is None:
        return None
    rows, passes = [], True
    for clause in flt.clauses:
        if clause.column in schema.names:
            dtype = schema.field(clause.column).type
            if pa.types.is_dictionary(dtype):
                dtype = dtype.value_type
            scalars = tuple(_to_scalar(v, dtype, clause.column, flt.text, where) for v in clause.values)
            rows.append((clause, dtype, scalars))
        elif clause.column in partition:
            passes = passes and _partition_passes(clause, partition[clause.column], flt.text, where)
        else:
            known = ", ".join(list(schema.names) + [f"{k} (partition)" for k in partition])
            raise InputError(f"score.filter {flt.text!r}: unknown column {clause.column!r} in {where} "
                             f"(columns: {known})")
    return BoundFilter(row_clauses=tuple(rows), partition_pass=passes)


def _to_scalar(value: Any, dtype: pa.DataType, column: str, text: str, where: str) -> pa.Scalar:
    ok = (
        (isinstance(value, str) and (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
                                     or _is_string_view(dtype) or pa.types.is_temporal(dtype)))
        or (isinstance(value, bool) and pa.types.is_boolean(dtype))
        or (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)))
    )
    if not ok:
        raise InputError(f"score.filter {text!r}: literal {value!r} does not fit column {column!r} "
                         f"of type {dtype} in {where}")
    try:
        if isinstance(value, float) and pa.types.is_integer(dtype):
            return pa.scalar(value, pa.float64())  # compare 3 < 3.5 without truncating the literal
        if isinstance(value, str) and pa.types.is_temporal(dtype):
            return pa.scalar(value).cast(dtype)
        return pa.scalar(value, dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
        raise InputError(f"score.filter {text!r}: literal {value!r} cannot be read as {dtype} "
                         f"(column {column!r} in {where}): {exc}") from None


def _is_string_view(dtype: pa.DataType) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(dtype))


def _evaluate(col: pa.Array, clause: Clause, scalars: tuple[pa.Scalar, ...]) -> pa.Array:
    if clause.op == "is_null":
        return pc.is_null(col)
    if clause.op == "is_not_null":
        return pc.is_valid(col)
    if clause.op in ("in", "not_in"):
        value_set = pa.array([s.as_py() for s in scalars], type=scalars[0].type)
        hit = pc.is_in(col, value_set=value_set)
        hit = pc.if_else(pc.is_null(col), pa.scalar(None, pa.bool_()), hit)
        return pc.invert(hit) if clause.op == "not_in" else hit
    return getattr(pc, clause.op)(col, scalars[0])


def _partition_passes(clause: Clause, raw: str, text: str, where: str) -> bool:
    """Evaluate a clause on a hive partition value (a string; numbers compare as numbers)."""
    value: Any = None if raw == "" else raw
    if clause.op == "is_null":
        return value is None
    if clause.op == "is_not_null":
        return value is not None
    if value is None:
        return False
    literals = clause.values
    if any(isinstance(v, bool) for v in literals):
        raise InputError(f"score.filter {text!r}: partition column {clause.column!r} holds text; "
                         f"compare it with a quoted value")
    if any(isinstance(v, (int, float)) for v in literals):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"score.filter {text!r}: partition value {raw!r} of {clause.column!r} in {where} "
                             f"is not a number; compare it with a quoted value") from None
        literals = tuple(float(v) if not isinstance(v, str) else v for v in literals)
        if any(isinstance(v, str) for v in literals):
            raise InputError(f"score.filter {text!r}: mixed text and number literals for {clause.column!r}")
    if clause.op == "in":
        return value in literals
    if clause.op == "not_in":
        return value not in literals
    lit = literals[0]
    return {"equal": value == lit, "not_equal": value != lit, "less": value < lit,
            "less_equal": value <= lit, "greater": value > lit, "greater_equal": value >= lit}[clause.op]
