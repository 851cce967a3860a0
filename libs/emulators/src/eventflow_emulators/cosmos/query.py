"""The subset of the Cosmos DB NoSQL query language the emulator understands.

    SELECT [TOP n] { * | VALUE COUNT(1) | VALUE <path> | <path> [, <path>]* } FROM <alias>
      [WHERE <condition>] [ORDER BY <path> [ASC|DESC] [, <path> [ASC|DESC]]*]

    condition := condition OR condition | condition AND condition | NOT condition | ( condition )
               | <operand> { = | != | <> | < | <= | > | >= } <operand>
               | STARTSWITH(<path>, <operand>) | IS_DEFINED(<path>) | ARRAY_CONTAINS(<path>, <operand>)
    operand   := <path> | @parameter | 'string' | "string" | number | true | false | null
    path      := <alias>.name[.name]* | <alias>["name"]

Comparisons between values of different JSON types are undefined (never true), as in Cosmos DB.
ORDER BY keeps items that lack the ordering property ("Queries with ORDER BY return all items,
including items where the property in the ORDER BY clause isn't defined", learn.microsoft.com
"ORDER BY (NoSQL query)"); they sort first ascending and last descending, then null, booleans,
numbers, strings, arrays and objects (the order of types is the service's; among arrays or
objects the emulator keeps the input order). Anything else is refused with a clear error instead
of being guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:(?P<number>-?\d+(?:\.\d+)?)|(?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<param>@\w+)|(?P<word>[A-Za-z_]\w*)|(?P<op><=|>=|!=|<>|[=<>(),.\[\]*]))"""
)
_UNDEFINED = object()
_UNSUPPORTED_CLAUSES = ("GROUP", "OFFSET", "LIMIT", "JOIN", "IN", "DISTINCT")
Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]
Operand = Callable[[Row], Any]


class QueryNotSupportedError(ValueError):
    """The query uses syntax outside the documented subset."""


@dataclass(frozen=True)
class Query:
    """A parsed query: apply it to the candidate items with `run`."""

    select: str  # "*", "count", "value" or "fields"
    paths: tuple[tuple[str, ...], ...]
    where: Predicate | None
    order_by: tuple[tuple[tuple[str, ...], bool], ...]
    top: int | None

    def run(self, items: Sequence[Row]) -> list[Any]:
        rows = [item for item in items if self.where is None or self.where(item)]
        if self.order_by:
            rows.sort(key=cmp_to_key(self._compare))
        if self.top is not None:
            rows = rows[: self.top]
        if self.select == "count":
            return [len(rows)]
        if self.select == "value":
            return [v for v in (_get(r, self.paths[0]) for r in rows) if v is not _UNDEFINED]
        if self.select == "fields":
            return [self._project(r) for r in rows]
        return list(rows)

    def _compare(self, left: Row, right: Row) -> int:
        for path, descending in self.order_by:
            order = _order(_get(left, path), _get(right, path))
            if order:
                return -order if descending else order
        return 0

    def _project(self, row: Row) -> dict[str, Any]:
        projected = {}
        for path in self.paths:
            value = _get(row, path)
            if value is not _UNDEFINED:
                projected[path[-1]] = value
        return projected


def _get(row: Any, path: tuple[str, ...]) -> Any:
    value = row
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            return _UNDEFINED
        value = value[name]
    return value


def _rank(value: Any) -> int:
    """The sort rank of a value's type: undefined, null, booleans, numbers, strings, arrays,
    objects."""
    if value is _UNDEFINED:
        return -1
    if value is None:
        return 0
    for rank, kinds in _TYPE_RANKS:
        if isinstance(value, kinds):
            return rank
    return 5


_TYPE_RANKS: tuple[tuple[int, type | tuple[type, ...]], ...] = (
    (1, bool), (2, (int, float)), (3, str), (4, list))  # fmt: skip


def _order(left: Any, right: Any) -> int:
    if _rank(left) != _rank(right):
        return (_rank(left) > _rank(right)) - (_rank(left) < _rank(right))
    if _rank(left) in (1, 2, 3):
        return int(left > right) - int(left < right)
    return 0


def _comparable(left: Any, right: Any) -> bool:
    if left is _UNDEFINED or right is _UNDEFINED:
        return False
    return _rank(left) == _rank(right)


_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: _comparable(a, b) and a == b,
    "!=": lambda a, b: _comparable(a, b) and a != b,
    "<": lambda a, b: _comparable(a, b) and _rank(a) in (2, 3) and a < b,
    "<=": lambda a, b: _comparable(a, b) and _rank(a) in (2, 3) and a <= b,
    ">": lambda a, b: _comparable(a, b) and _rank(a) in (2, 3) and a > b,
    ">=": lambda a, b: _comparable(a, b) and _rank(a) in (2, 3) and a >= b,
}
_COMPARATORS["<>"] = _COMPARATORS["!="]


class _Parser:
    def __init__(self, text: str, parameters: Mapping[str, Any]) -> None:
        self.tokens = self._tokenize(text)
        self.position = 0
        self.parameters = parameters
        self.alias = ""

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str]]:
        tokens: list[tuple[str, str]] = []
        position = 0
        text = text.strip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise QueryNotSupportedError(f"cannot read the query at {text[position:][:20]!r}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            position = match.end()
        return tokens

    def peek(self, *words: str) -> bool:
        if self.position >= len(self.tokens):
            return False
        kind, value = self.tokens[self.position]
        return (value.upper() if kind == "word" else value) in words

    def take(self, *words: str) -> str:
        if not self.peek(*words):
            found = self.tokens[self.position][1] if self.position < len(self.tokens) else "end"
            raise QueryNotSupportedError(f"expected {' or '.join(words)}, found {found!r}")
        self.position += 1
        return self.tokens[self.position - 1][1]

    def next_token(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise QueryNotSupportedError("the query ends too early")
        self.position += 1
        return self.tokens[self.position - 1]

    def parse(self) -> Query:
        self.take("SELECT")
        top = None
        if self.peek("TOP"):
            self.take("TOP")
            top = int(self.next_token()[1])
        if self.peek("DISTINCT"):
            self._unsupported()
        select, paths = self._selection()
        self.take("FROM")
        self.alias = self.next_token()[1]
        if self.peek("AS"):
            self.take("AS")
        if self.peek(*_UNSUPPORTED_CLAUSES):
            self._unsupported()
        if self.position < len(self.tokens) and not self.peek("WHERE", "ORDER"):
            self.alias = self.next_token()[1]  # FROM root r: the second name is the alias
        self._check_alias(paths)
        where = None
        if self.peek("WHERE"):
            self.take("WHERE")
            where = self._or()
        order: list[tuple[tuple[str, ...], bool]] = []
        if self.peek("ORDER"):
            self.take("ORDER")
            self.take("BY")
            order.append(self._order_term())
            while self.peek(","):
                self.take(",")
                order.append(self._order_term())
        if self.position != len(self.tokens):
            self._unsupported()
        return Query(select, tuple(path[1:] for path in paths), where, tuple(order), top)

    def _unsupported(self) -> None:
        clause = " ".join(value for _, value in self.tokens[self.position : self.position + 3])
        raise QueryNotSupportedError(f"unsupported clause {clause!r}")

    def _selection(self) -> tuple[str, list[tuple[str, ...]]]:
        if self.peek("*"):
            self.take("*")
            return "*", []
        if self.peek("VALUE"):
            self.take("VALUE")
            if self.peek("COUNT"):
                self.take("COUNT")
                self.take("(")
                self.next_token()
                self.take(")")
                return "count", []
            return "value", [self._raw_path()]
        paths = [self._raw_path()]
        while self.peek(","):
            self.take(",")
            paths.append(self._raw_path())
        return "fields", paths

    def _check_alias(self, paths: list[tuple[str, ...]]) -> None:
        for path in paths:
            if path[0] != self.alias:
                raise QueryNotSupportedError(f"unknown alias {path[0]!r}")

    def _raw_path(self) -> tuple[str, ...]:
        kind, root = self.next_token()
        if kind != "word":
            raise QueryNotSupportedError(f"expected a property path, found {root!r}")
        names = [root]
        while self.peek(".", "["):
            if self.take(".", "[") == ".":
                names.append(self.next_token()[1])
            else:
                names.append(_unquote(self.next_token()[1]))
                self.take("]")
        return tuple(names)

    def _path(self) -> tuple[str, ...]:
        path = self._raw_path()
        self._check_alias([path])
        return path[1:]

    def _order_term(self) -> tuple[tuple[str, ...], bool]:
        path = self._path()
        descending = False
        if self.peek("ASC", "DESC"):
            descending = self.take("ASC", "DESC").upper() == "DESC"
        return path, descending

    def _or(self) -> Predicate:
        left = self._and()
        while self.peek("OR"):
            self.take("OR")
            right = self._and()
            left = _either(left, right)
        return left

    def _and(self) -> Predicate:
        left = self._not()
        while self.peek("AND"):
            self.take("AND")
            right = self._not()
            left = _both(left, right)
        return left

    def _not(self) -> Predicate:
        if self.peek("NOT"):
            self.take("NOT")
            inner = self._not()
            return lambda row: not inner(row)
        if self.peek("("):
            self.take("(")
            inner = self._or()
            self.take(")")
            return inner
        return self._condition()

    def _condition(self) -> Predicate:
        if self.peek("STARTSWITH", "IS_DEFINED", "ARRAY_CONTAINS"):
            return self._function(self.take("STARTSWITH", "IS_DEFINED", "ARRAY_CONTAINS").upper())
        left = self._operand()
        comparator = _COMPARATORS[self.take(*_COMPARATORS)]
        right = self._operand()
        return lambda row: comparator(left(row), right(row))

    def _function(self, name: str) -> Predicate:
        self.take("(")
        path = self._path()
        if name == "IS_DEFINED":
            self.take(")")
            return lambda row: _get(row, path) is not _UNDEFINED
        self.take(",")
        argument = self._operand()
        self.take(")")
        if name == "STARTSWITH":
            return lambda row: _starts_with(_get(row, path), argument(row))
        return lambda row: _array_contains(_get(row, path), argument(row))

    def _operand(self) -> Operand:
        kind, value = self.tokens[self.position] if self.position < len(self.tokens) else ("", "")
        if kind == "word" and value == self.alias:
            path = self._path()
            return lambda row: _get(row, path)
        self.position += 1
        constant: Any
        if kind == "param":
            if value not in self.parameters:
                raise QueryNotSupportedError(f"parameter {value} has no value")
            constant = self.parameters[value]
        elif kind == "string":
            constant = _unquote(value)
        elif kind == "number":
            constant = float(value) if "." in value else int(value)
        elif kind == "word" and value.lower() in ("true", "false", "null"):
            constant = {"true": True, "false": False, "null": None}[value.lower()]
        else:
            raise QueryNotSupportedError(f"unsupported operand {value!r}")
        return lambda _row: constant


def _either(left: Predicate, right: Predicate) -> Predicate:
    return lambda row: left(row) or right(row)


def _both(left: Predicate, right: Predicate) -> Predicate:
    return lambda row: left(row) and right(row)


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def _starts_with(value: Any, prefix: Any) -> bool:
    return isinstance(value, str) and isinstance(prefix, str) and value.startswith(prefix)


def _array_contains(value: Any, element: Any) -> bool:
    return isinstance(value, list) and any(_comparable(v, element) and v == element for v in value)


def parse_query(text: str, parameters: Sequence[Mapping[str, Any]] | None = None) -> Query:
    """Parse `text` with `parameters` ([{"name": "@x", "value": ...}]) bound.

    Raises QueryNotSupportedError for anything outside the subset described in this module.
    """
    try:
        bound = {str(p["name"]): p["value"] for p in parameters or ()}
        return _Parser(text, bound).parse()
    except (IndexError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, QueryNotSupportedError):
            raise
        raise QueryNotSupportedError(f"cannot parse the query: {error}") from None
