"""``score.where``: a SQL condition, parsed by sqlglot, turned into a pyarrow expression (never run as SQL).

Allowed: comparisons (``= == <> != < <= > >=``), ``AND``/``OR``/``NOT``, parentheses,
``IN (...)``, ``BETWEEN``, ``IS [NOT] NULL``, ``[NOT] LIKE``/``ILIKE``, a bare boolean
column, on columns and literal values (``'text'``, numbers, ``TRUE``/``FALSE``, ``NULL``,
``DATE '...'``, ``TIMESTAMP '...'``). Anything else (a function, a subquery, arithmetic,
a second statement after ``;``, a comment) is refused with an InputError that names it.

A literal is cast to its column's type, as SQL engines do: ``dt >= '2026-11-02'`` on a
date column compares dates, ``n = '5'`` on an integer column compares integers; a number
against a text column is refused (quote it). SQL's three-valued logic holds: a comparison
with NULL is unknown, and unknown rows are not selected. Hive partition keys are columns
too: for one file they are constants, and for the whole lake :func:`to_expression` can
mark every predicate on data columns unknown, so pyarrow prunes partitions by path alone.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bertflow.bert_core.errors import InputError

ALLOWED = ("comparisons (= <> != < <= > >=), AND, OR, NOT, parentheses, IN (...), BETWEEN, IS [NOT] NULL, "
           "LIKE / ILIKE, on columns and literal values")


@dataclass(frozen=True)
class Where:
    """A checked condition: its text, the config key it came from, and sqlglot's tree of it."""

    text: str
    key: str  # "score.where " (with its space), or "" in a config error
    tree: Any  # sqlglot.exp.Expression

    @property
    def columns(self) -> list[str]:
        """The column names it uses, as written, in order of appearance."""
        from sqlglot import exp

        return list(dict.fromkeys(c.name for c in self.tree.find_all(exp.Column)))

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.key}{self.text!r}: {what}")


# What a column name stands for when a condition is bound: a column of the data, a constant
# (a hive partition value of the file at hand), or unknown (a data column while pruning by path).
@dataclass(frozen=True)
class Field:
    name: str
    type: pa.DataType


@dataclass(frozen=True)
class Const:
    value: pa.Scalar


UNKNOWN = object()
Resolver = Callable[[str], "Field | Const | object"]


def parse_where(text: str | None, key: str = "score.where") -> Where | None:
    """Parse and check ``text`` (None or blank: no condition); InputError naming anything not allowed.

    Messages start with ``key`` (none when ``key`` is empty: a config error adds its own).
    """
    import sqlglot
    from sqlglot.errors import ParseError, TokenError
    from sqlglot.tokens import TokenType

    if text is None or not text.strip():
        return None
    key = f"{key} " if key else ""
    try:
        tokens = sqlglot.tokenize(text)
    except TokenError as exc:
        raise InputError(f"{key}{text!r}: cannot be read as SQL ({_first_line(exc)})") from None
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            raise InputError(f"{key}{text!r}: ';' is not allowed (one condition, no second statement)")
        if tok.comments:
            raise InputError(f"{key}{text!r}: a comment (-- or /* */) is not allowed")
    try:
        trees = sqlglot.parse(text)
    except (ParseError, TokenError) as exc:
        raise InputError(f"{key}{text!r}: not a valid SQL condition ({_first_line(exc)})") from None
    if len(trees) != 1 or trees[0] is None:
        raise InputError(f"{key}{text!r}: expected one condition")
    where = Where(text, key, trees[0])
    _check_condition(where, where.tree)
    return where


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# ---------------------------------------------------------------------------------------------- checking
def _check_condition(w: Where, node) -> None:
    from sqlglot import exp

    if isinstance(node, (exp.And, exp.Or)):
        _check_condition(w, node.this)
        _check_condition(w, node.expression)
    elif isinstance(node, (exp.Not, exp.Paren)):
        _check_condition(w, node.this)
    elif _is_comparison(node):
        left, right = node.this, node.expression
        _check_value(w, left)
        _check_value(w, right)
        if not (isinstance(left, exp.Column) or isinstance(right, exp.Column)):
            raise w.fail(f"{node.sql()!r} compares no column; one side of a comparison must be a column")
    elif isinstance(node, exp.In):
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            raise w.fail("a subquery is not allowed; list the values: IN ('a', 'b')")
        _check_column(w, node.this)
        if not node.expressions:
            raise w.fail("IN () needs at least one value")
        for value in node.expressions:
            _check_literal(w, value)
    elif isinstance(node, exp.Between):
        _check_column(w, node.this)
        _check_literal(w, node.args["low"])
        _check_literal(w, node.args["high"])
    elif isinstance(node, exp.Is):
        _check_column(w, node.this)
        if not isinstance(node.expression, exp.Null):
            raise w.fail(f"{node.sql()!r} is not allowed; only IS NULL and IS NOT NULL")
    elif isinstance(node, (exp.Like, exp.ILike)):
        _check_column(w, node.this)
        if not (isinstance(node.expression, exp.Literal) and node.expression.is_string):
            raise w.fail(f"{node.sql()!r}: the LIKE pattern must be a quoted string")
    elif isinstance(node, exp.Column):
        _check_column(w, node)  # a bare boolean column
    else:
        raise w.fail(f"{_describe(node)} is not allowed (allowed: {ALLOWED})")


def _check_value(w: Where, node) -> None:
    from sqlglot import exp

    if isinstance(node, exp.Column):
        _check_column(w, node)
    else:
        _check_literal(w, node)


def _check_column(w: Where, node) -> None:
    from sqlglot import exp

    if not isinstance(node, exp.Column):
        raise w.fail(f"{_describe(node)} is not allowed where a column is expected (allowed: {ALLOWED})")
    if node.table or not isinstance(node.this, exp.Identifier):
        raise w.fail(f"{node.sql()!r}: use a plain column name (no table prefix)")


def _check_literal(w: Where, node) -> None:
    _literal_value(w, node)


def _literal_value(w: Where, node) -> tuple[str, Any]:
    """``(kind, python value)`` of a literal node: string, number, bool, null, date or timestamp."""
    from sqlglot import exp

    if isinstance(node, exp.Paren):
        return _literal_value(w, node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return "string", node.this
        return "number", _number(node.this)
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return "number", -_number(node.this.this)
    if isinstance(node, exp.Boolean):
        return "bool", bool(node.this)
    if isinstance(node, exp.Null):
        return "null", None
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string:
        to = node.to.this
        if to == exp.DataType.Type.DATE:
            return "date", node.this.this
        if to in (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.DATETIME):
            return "timestamp", node.this.this
    raise w.fail(f"{_describe(node)} is not allowed where a value is expected (allowed: {ALLOWED})")


def _number(text: str) -> int | decimal.Decimal:
    try:
        return int(text)
    except ValueError:
        return decimal.Decimal(text)


def _describe(node) -> str:
    """What a refused node is, in the user's terms: a function, a subquery, an operator..."""
    from sqlglot import exp

    sql = node.sql()
    sql = sql if len(sql) <= 60 else sql[:57] + "..."
    if isinstance(node, (exp.Subquery, exp.Query, exp.Exists)) or node.find(exp.Select) is not None:
        return f"a subquery ({sql!r})"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()} ({sql!r})"
    if isinstance(node, exp.Placeholder):
        return f"a parameter placeholder ({sql!r})"
    if isinstance(node, exp.Binary):
        return f"operator {type(node).__name__.upper()} ({sql!r})"
    return f"{type(node).__name__.lower()} {sql!r}"


def _is_comparison(node) -> bool:
    from sqlglot import exp

    return isinstance(node, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE))


# ---------------------------------------------------------------------------------------------- binding
_FLIP = {"eq": "eq", "neq": "neq", "gt": "lt", "gte": "lte", "lt": "gt", "lte": "gte"}
_OPS = {"eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}


def to_expression(where: Where, resolve: Resolver, label: str) -> tuple[ds.Expression, list[pa.Field]]:
    """``where`` as a pyarrow expression; ``resolve`` says what each column name is.

    Returns the expression and the boolean placeholder fields it uses: a predicate on a
    column resolved to ``UNKNOWN`` becomes one such field, so pyarrow can simplify the
    rest (partition pruning) without knowing the data. ``label`` names the file or lake
    in error messages.
    """
    binder = _Binder(where, resolve, label)
    return binder.condition(where.tree), binder.unknowns


class _Binder:
    def __init__(self, where: Where, resolve: Resolver, label: str) -> None:
        self.w, self.resolve, self.label = where, resolve, label
        self.unknowns: list[pa.Field] = []

    def fail(self, what: str) -> InputError:
        return self.w.fail(f"{what} (in {self.label})")

    def condition(self, node) -> ds.Expression:
        from sqlglot import exp

        if isinstance(node, exp.And):
            return self.condition(node.this) & self.condition(node.expression)
        if isinstance(node, exp.Or):
            return self.condition(node.this) | self.condition(node.expression)
        if isinstance(node, exp.Not):
            return ~self.condition(node.this)
        if isinstance(node, exp.Paren):
            return self.condition(node.this)
        refs = {c.name: self.resolve(c.name) for c in node.find_all(exp.Column)}
        if any(r is UNKNOWN for r in refs.values()):
            placeholder = pa.field(f"__where_{len(self.unknowns)}", pa.bool_())
            self.unknowns.append(placeholder)
            return ds.field(placeholder.name)
        return self.predicate(node, refs)

    def predicate(self, node, refs: dict) -> ds.Expression:
        from sqlglot import exp

        if _is_comparison(node):
            op = type(node).__name__.lower()
            left, right = node.this, node.expression
            if not isinstance(left, exp.Column):
                left, right, op = right, left, _FLIP[op]
            a = self.operand(left, refs)
            if isinstance(right, exp.Column):
                b = self.operand(right, refs)
            else:
                b = self.literal(right, self.type_of(left, refs), left.name)
            return _OPS[op](a, b)
        if isinstance(node, exp.In):
            col = self.operand(node.this, refs)
            typ = self.type_of(node.this, refs)
            terms = [col == self.literal(v, typ, node.this.name) for v in node.expressions]
            return _balanced_or(terms)
        if isinstance(node, exp.Between):
            col, typ = self.operand(node.this, refs), self.type_of(node.this, refs)
            low = self.literal(node.args["low"], typ, node.this.name)
            high = self.literal(node.args["high"], typ, node.this.name)
            return (col >= low) & (col <= high)
        if isinstance(node, exp.Is):
            return self.operand(node.this, refs).is_null()
        if isinstance(node, (exp.Like, exp.ILike)):
            typ = self.type_of(node.this, refs)
            if not _is_text(typ):
                raise self.fail(f"LIKE needs a text column; {node.this.name!r} is {typ}")
            pattern = node.expression.this.replace("\\", "\\\\")  # SQL LIKE has no escape character; Arrow's is \
            like = pc.match_like(self.operand(node.this, refs), pattern=pattern,
                                 ignore_case=isinstance(node, exp.ILike))
            return ~like if node.args.get("negate") else like
        if isinstance(node, exp.Column):
            typ = self.type_of(node, refs)
            if not pa.types.is_boolean(typ):
                raise self.fail(f"column {node.name!r} ({typ}) is not a condition; compare it with a value")
            return self.operand(node, refs)
        raise self.fail(f"{_describe(node)} is not allowed")  # _check_condition refused it already

    def operand(self, column, refs: dict) -> ds.Expression:
        ref = refs[column.name]
        if isinstance(ref, Const):
            return pc.scalar(ref.value)
        if pa.types.is_dictionary(ref.type):
            return ds.field(ref.name).cast(ref.type.value_type)
        return ds.field(ref.name)

    def type_of(self, column, refs: dict) -> pa.DataType:
        ref = refs[column.name]
        typ = ref.value.type if isinstance(ref, Const) else ref.type
        return typ.value_type if pa.types.is_dictionary(typ) else typ

    def literal(self, node, typ: pa.DataType, column: str) -> ds.Expression:
        kind, value = _literal_value(self.w, node)
        return pc.scalar(self.cast(kind, value, typ, column))

    def cast(self, kind: str, value: Any, typ: pa.DataType, column: str) -> pa.Scalar:
        """A literal as a scalar of the column's type (or a type the column compares with exactly)."""
        shown = f"'{value}'" if kind in ("string", "date", "timestamp") else repr(value)
        try:
            if kind == "null":
                return pa.scalar(None, typ)
            if kind == "string":
                if _is_text(typ):
                    return pa.scalar(value, pa.string())
                return _parse_as(value, typ)
            if kind in ("date", "timestamp"):
                if _is_text(typ) or not (pa.types.is_temporal(typ)):
                    raise self.fail(f"{kind.upper()} {shown} does not fit column {column!r} of type {typ}")
                own = _parse_as(value, pa.date32() if kind == "date" else pa.timestamp("us"))
                return own  # pyarrow compares dates with timestamps exactly; no truncation either way
            if kind == "bool":
                if not pa.types.is_boolean(typ):
                    raise self.fail(f"literal {shown} does not fit column {column!r} of type {typ}")
                return pa.scalar(value, typ)
            # a number
            if _is_text(typ):
                raise self.fail(f"literal {shown} is a number but column {column!r} holds text; quote it ('{value}')")
            if pa.types.is_integer(typ):
                if isinstance(value, int):
                    try:
                        return pa.scalar(value, typ)
                    except (OverflowError, pa.ArrowInvalid):
                        return pa.scalar(value, pa.int64()) if -2**63 <= value < 2**63 else pa.scalar(float(value))
                return pa.scalar(float(value))  # 3 < 3.5: compare without truncating the literal
            if pa.types.is_floating(typ):
                return pa.scalar(float(value), pa.float64())
            if pa.types.is_decimal(typ):
                try:
                    return pa.scalar(decimal.Decimal(value), typ)
                except (pa.ArrowInvalid, decimal.InvalidOperation):
                    return pa.scalar(float(value), pa.float64())
            raise self.fail(f"literal {shown} does not fit column {column!r} of type {typ}")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, ValueError) as exc:
            raise self.fail(f"literal {shown} cannot be read as {typ} (column {column!r}): "
                            f"{_first_line(exc)}") from None


def _parse_as(text: str, typ: pa.DataType) -> pa.Scalar:
    """A string read as ``typ``; a timestamp without a zone against a zoned column is read as UTC."""
    if pa.types.is_timestamp(typ) and typ.tz is not None:
        try:
            return pa.scalar(text).cast(typ)
        except pa.ArrowInvalid:
            naive = pa.scalar(text).cast(pa.timestamp(typ.unit))
            return pa.scalar(naive.value, typ)
    return pa.scalar(text).cast(typ)


def _is_text(typ: pa.DataType) -> bool:
    view = getattr(pa.types, "is_string_view", None)
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or bool(view and view(typ))


def _balanced_or(terms: list[ds.Expression]) -> ds.Expression:
    """``a OR b OR ...`` as a balanced tree (a long IN list stays shallow)."""
    while len(terms) > 1:
        terms = [terms[i] | terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


# ---------------------------------------------------------------------------------------------- one file
@dataclass(frozen=True)
class BoundWhere:
    """A condition bound to one file: its expression over the file's columns (partition keys folded in)."""

    expression: ds.Expression
    reads: tuple[str, ...]  # the file's columns the expression reads

    @property
    def columns(self) -> list[str]:
        return list(self.reads)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of ``batch`` for which the condition is true (unknown counts as false)."""
        return batch.filter(self.expression)


def bind_where(where: Where | None, schema: pa.Schema, partition: dict[str, pa.Scalar], label: str
               ) -> BoundWhere | None:
    """Bind ``where`` to one file's schema and typed partition values; InputError for an unknown column or
    a literal that does not fit its column (the message names the file)."""
    if where is None:
        return None
    names = schema.names
    used: list[str] = []

    def resolve(name: str):
        col = _match(name, names)
        if col is not None:
            used.append(col)
            return Field(col, schema.field(col).type)
        key = _match(name, list(partition))
        if key is not None:
            return Const(partition[key])
        known = ", ".join(list(names) + [f"{k} (partition)" for k in partition])
        raise where.fail(f"unknown column {name!r} in {label} (columns: {known})")

    expression, _ = to_expression(where, resolve, label)
    try:  # type errors (a text column compared with a date column...) surface here, not mid-run
        schema.empty_table().filter(expression)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise where.fail(f"cannot be evaluated on {label}: {_first_line(exc)}") from None
    return BoundWhere(expression, tuple(dict.fromkeys(used)))


def _match(name: str, names: list[str]) -> str | None:
    """``name`` itself, else its one case-insensitive match (SQL engines match identifiers without case)."""
    if name in names:
        return name
    found = [n for n in names if n.lower() == name.lower()]
    return found[0] if len(found) == 1 else None
