"""The syntax of approval and monitor rules: tokens, a recursive-descent parser, the tree.

    Accuracy >= 0.8 and f1-score >= champion.f1-score * 0.98
    (Accuracy >= 0.8 or Recall >= 0.9) and not "mean absolute error" > 0.2

Grammar, loosest first; every level but comparison is left-associative:

    rule       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum (">=" | "<=" | ">" | "<" | "==" | "!=") sum     -- one operator, never chained
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | atom
    atom       := NUMBER | NAME | '"' quoted name '"' | "champion." NAME | "champion." '"' ... '"'
                | "(" or ")"

A rule must be a condition: `Accuracy` or `Accuracy + 1` alone is an error, and so is arithmetic on
a condition. Both are found when the rule is parsed, so a bad rule stops the run before it starts.

Names are written exactly as the model's evaluation reports them, case and all. A bare name is
`[A-Za-z_][A-Za-z0-9_.-]*`: **a `-` inside a name joins it**, because metric names such as
`f1-score` are common and subtraction in a rule is rare. Subtraction therefore needs spaces around
the `-`: `Accuracy - 0.01` subtracts, `Accuracy-0.01` names a metric that does not exist. Any
other name is double-quoted, with `\\"` and `\\\\` inside: `"mean absolute error"`.
`champion.NAME` and `champion."quoted name"` are that metric of the version in production.
`and`, `or`, `not` and the `champion` prefix are reserved in any case; quote a metric so named.

A rule that does not parse raises `RuleError` with the column at fault; `rules.Rule` is
what the rest of fleet uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import Enum

from fleet.errors import ConfigError

# Parentheses, `not` and unary minus nested deeper than this are refused, so that a hostile or
# broken rule meets a RuleError rather than Python's recursion limit.
_MAX_NESTING = 50


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


# Characters that may not follow a number directly: `1e`, `0.8and`, `1.2.3` are typos.
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]+")


CHAMPION = "champion"


_COMPARISONS = (">=", "<=", "==", "!=", ">", "<")


# Two-character operators first, so that `>=` is not read as `>` followed by `=`.
_OPERATORS = (*_COMPARISONS, "+", "-", "*", "/", "(", ")")


_HINTS = {
    "=": " (write '==' to test equality)",
    "!": " (write '!=' to test inequality)",
    "'": ' (quote names with double quotes: "mean absolute error")',
}


class RuleError(ConfigError, ValueError):
    """A rule that does not parse; `position` is the 0-based index in `text` where it goes wrong.

    A ValueError so that a pydantic validator reports it as a field error, and a ConfigError
    so that anywhere else it ends the run as a configuration mistake.
    """

    def __init__(self, text: str, position: int, reason: str) -> None:
        super().__init__(text, position, reason)
        self.text = text
        self.position = position
        self.reason = reason

    def __str__(self) -> str:
        column = self.position + 1
        return f"syntax error at column {column}: {self.reason} (in: {one_line(self.text)})"


@dataclass(frozen=True, slots=True)
class Number:
    value: Decimal
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    champion: bool
    start: int
    end: int

    @property
    def label(self) -> str:
        return f"{CHAMPION}.{self.name}" if self.champion else self.name


@dataclass(frozen=True, slots=True)
class Negative:
    operand: Expression
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Chain:
    """`first op operand op operand ...` at one precedence level, flat so long sums stay shallow."""

    first: Expression
    rest: tuple[tuple[str, Expression], ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Expression
    right: Expression
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Condition
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Junction:
    op: str  # "and" or "or"
    operands: tuple[Condition, ...]
    start: int
    end: int


Expression = Number | Metric | Negative | Chain


Condition = Compare | Not | Junction


Node = Expression | Condition


def metrics_in(node: Node) -> Iterator[Metric]:
    match node:
        case Metric():
            yield node
        case Negative():
            yield from metrics_in(node.operand)
        case Not():
            yield from metrics_in(node.operand)
        case Chain():
            yield from metrics_in(node.first)
            for _, operand in node.rest:
                yield from metrics_in(operand)
        case Compare():
            yield from metrics_in(node.left)
            yield from metrics_in(node.right)
        case Junction():
            for condition in node.operands:
                yield from metrics_in(condition)


def comparisons_in(node: Condition) -> Iterator[Compare]:
    match node:
        case Compare():
            yield node
        case Not():
            yield from comparisons_in(node.operand)
        case Junction():
            for operand in node.operands:
                yield from comparisons_in(operand)


class _Kind(Enum):
    NUMBER = "number"
    NAME = "name"
    CHAMPION = "champion metric"
    OPERATOR = "operator"
    AND = "and"
    OR = "or"
    NOT = "not"
    END = "end"


_KEYWORDS = {"and": _Kind.AND, "or": _Kind.OR, "not": _Kind.NOT}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str  # as written, quotes included
    start: int
    end: int
    value: str = ""  # a name unquoted, or a number's digits

    def is_op(self, *ops: str) -> bool:
        return self.kind is _Kind.OPERATOR and self.text in ops


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        token = _token(text, at)
        tokens.append(token)
        at = token.end
    tokens.append(_Token(_Kind.END, "", len(text), len(text)))
    return tokens


def _token(text: str, at: int) -> _Token:
    char = text[at]
    if char == '"':
        name, end = _quoted(text, at)
        return _Token(_Kind.NAME, text[at:end], at, end, name)
    if _NAME.match(char):
        return _word(text, at)
    if _NUMBER.match(text, at):
        return _number(text, at)
    for op in _OPERATORS:
        if text.startswith(op, at):
            return _Token(_Kind.OPERATOR, op, at, at + len(op))
    hint = _HINTS.get(char, "")
    if not hint and not char.isascii():
        hint = ' (quote names with other characters: "Précision")'
    raise _error(text, at, f"unexpected character {char!r}{hint}")


def _quoted(text: str, start: int) -> tuple[str, int]:
    chars: list[str] = []
    at = start + 1
    while at < len(text):
        char = text[at]
        if char == "\\" and at + 1 < len(text):
            chars.append(text[at + 1])
            at += 2
            continue
        if char == '"':
            if not chars:
                raise _error(text, start, "empty quoted name")
            return "".join(chars), at + 1
        chars.append(char)
        at += 1
    raise _error(text, start, "unterminated quoted name: no closing '\"'")


def _word(text: str, at: int) -> _Token:
    match = _NAME.match(text, at)
    assert match is not None
    word, end = match.group(), match.end()
    lower = word.lower()
    if lower in _KEYWORDS:
        return _Token(_KEYWORDS[lower], word, at, end)
    if lower == CHAMPION:
        reason = "'champion' is reserved: write champion.NAME for the champion's metric"
        raise _error(text, at, reason)
    if not lower.startswith(f"{CHAMPION}."):
        return _Token(_Kind.NAME, word, at, end, word)
    name_at = at + len(CHAMPION) + 1
    if name_at == end and text.startswith('"', end):
        name, end = _quoted(text, end)
        return _Token(_Kind.CHAMPION, text[at:end], at, end, name)
    name = text[name_at:end]
    if not _NAME.fullmatch(name):
        raise _error(text, name_at, "'champion.' must be followed by a metric name")
    if name.lower() in _KEYWORDS:
        raise _error(text, name_at, _keyword_reason(name))
    return _Token(_Kind.CHAMPION, word, at, end, name)


def _number(text: str, at: int) -> _Token:
    match = _NUMBER.match(text, at)
    assert match is not None
    end = match.end()
    tail = _NUMBER_TAIL.match(text, end)
    if tail is not None:
        raise _error(text, at, f"malformed number '{text[at : tail.end()]}'")
    if not math.isfinite(float(match.group())):
        raise _error(text, at, f"number out of range '{match.group()}'")
    return _Token(_Kind.NUMBER, match.group(), at, end, match.group())


class Parser:
    """Recursive descent over the token list, one method per precedence level."""

    __slots__ = ("_at", "_depth", "_text", "_tokens")

    def __init__(self, text: str) -> None:
        self._text = text
        if not text.strip():
            raise self._error(0, "empty rule")
        self._tokens = _tokens(text)
        self._at = 0
        self._depth = 0

    def rule(self) -> Condition:
        condition = self._condition(self._or())
        token = self._peek()
        if token.is_op(")"):
            raise self._error(token.start, "unbalanced parenthesis: ')' without a matching '('")
        if token.kind is not _Kind.END:
            raise self._error(
                token.start,
                f"unexpected {_quote(token.text)} after a complete condition "
                "(join conditions with 'and' or 'or')",
            )
        return condition

    def _or(self) -> Node:
        return self._junction(_Kind.OR, self._and)

    def _and(self) -> Node:
        return self._junction(_Kind.AND, self._not)

    def _junction(self, kind: _Kind, operand: Callable[[], Node]) -> Node:
        first = operand()
        if self._peek().kind is not kind:
            return first
        operands = [self._condition(first)]
        while self._peek().kind is kind:
            self._advance()
            operands.append(self._condition(operand()))
        return Junction(kind.value, tuple(operands), first.start, operands[-1].end)

    def _not(self) -> Node:
        token = self._peek()
        if token.kind is not _Kind.NOT:
            return self._comparison()
        if self._peek(1).is_op(*_COMPARISONS, "+", "*", "/"):
            raise self._error(token.start, _keyword_reason(token.text))
        self._advance()
        with self._nested(token):
            operand = self._condition(self._not())
        return Not(operand, token.start, operand.end)

    def _comparison(self) -> Node:
        left = self._sum()
        token = self._peek()
        if not token.is_op(*_COMPARISONS):
            return left
        lhs = self._expression(left)
        self._advance()
        right = self._expression(self._sum())
        after = self._peek()
        if after.is_op(*_COMPARISONS):
            raise self._error(
                after.start,
                "chained comparison: compare once, and join with 'and' (a < b and b < c)",
            )
        text = one_line(self._text[left.start : right.end])
        return Compare(token.text, lhs, right, text, lhs.start, right.end)

    def _sum(self) -> Node:
        return self._chain(("+", "-"), self._product)

    def _product(self) -> Node:
        return self._chain(("*", "/"), self._unary)

    def _chain(self, ops: tuple[str, ...], operand: Callable[[], Node]) -> Node:
        first = operand()
        if not self._peek().is_op(*ops):
            return first
        start = self._expression(first)
        rest: list[tuple[str, Expression]] = []
        while self._peek().is_op(*ops):
            op = self._advance().text
            rest.append((op, self._expression(operand())))
        return Chain(start, tuple(rest), first.start, rest[-1][1].end)

    def _unary(self) -> Node:
        token = self._peek()
        if not token.is_op("-"):
            return self._atom()
        self._advance()
        with self._nested(token):
            operand = self._expression(self._unary())
        return Negative(operand, token.start, operand.end)

    def _atom(self) -> Node:
        token = self._peek()
        match token.kind:
            case _Kind.NUMBER:
                self._advance()
                return Number(Decimal(token.value), token.start, token.end)
            case _Kind.NAME | _Kind.CHAMPION:
                self._advance()
                champion = token.kind is _Kind.CHAMPION
                return Metric(token.value, champion, token.start, token.end)
            case _Kind.OPERATOR if token.text == "(":
                return self._parenthesised(token)
            case _Kind.AND | _Kind.OR | _Kind.NOT if self._beside_operator():
                raise self._error(token.start, _keyword_reason(token.text))
        raise self._missing_operand(token)

    def _parenthesised(self, opening: _Token) -> Node:
        self._advance()
        with self._nested(opening):
            inner = self._or()
        closing = self._peek()
        if closing.kind is _Kind.END:
            raise self._error(opening.start, "unbalanced parenthesis: '(' is never closed")
        if not closing.is_op(")"):
            raise self._error(
                closing.start,
                f"expected ')' to close the '(' at column {opening.start + 1}, "
                f"found {_quote(closing.text)}",
            )
        self._advance()
        return replace(inner, start=opening.start, end=closing.end)

    def _missing_operand(self, token: _Token) -> RuleError:
        if self._at == 0:
            return self._error(token.start, f"missing operand before {_quote(token.text)}")
        previous = self._tokens[self._at - 1]
        return self._error(token.start, f"missing operand after {_quote(previous.text)}")

    def _beside_operator(self) -> bool:
        """A keyword between operators (`and >= 0.8`, `x >= or`) was meant as a metric name."""
        after = self._peek(1).is_op(*_COMPARISONS, "+", "*", "/")
        before = self._at > 0 and self._tokens[self._at - 1].is_op(*_OPERATORS[:-2])
        return after or before

    def _condition(self, node: Node) -> Condition:
        if isinstance(node, Compare | Not | Junction):
            return node
        raise self._error(
            node.end,
            "missing comparison: expected >=, <=, >, <, == or != after "
            f"{_quote(self._text[node.start : node.end])}",
        )

    def _expression(self, node: Node) -> Expression:
        if isinstance(node, Number | Metric | Negative | Chain):
            return node
        raise self._error(
            node.start,
            f"a comparison is not a number: {_quote(self._text[node.start : node.end])} "
            "cannot be compared or used in arithmetic",
        )

    @contextmanager
    def _nested(self, token: _Token) -> Iterator[None]:
        self._depth += 1
        if self._depth > _MAX_NESTING:
            raise self._error(token.start, f"nested more than {_MAX_NESTING} levels deep")
        yield
        self._depth -= 1

    def _peek(self, ahead: int = 0) -> _Token:
        return self._tokens[min(self._at + ahead, len(self._tokens) - 1)]

    def _advance(self) -> _Token:
        token = self._tokens[self._at]
        self._at += 1
        return token

    def _error(self, position: int, reason: str) -> RuleError:
        return _error(self._text, position, reason)


def _error(text: str, position: int, reason: str) -> RuleError:
    return RuleError(text, position, reason)


def _keyword_reason(word: str) -> str:
    return f"'{word}' is a keyword, not a metric name (quote it to name a metric: \"{word}\")"


def _quote(text: str) -> str:
    return f"'{one_line(text)}'" if text else "the end of the rule"


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines())
