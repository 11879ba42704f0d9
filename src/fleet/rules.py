"""Approval rules: a small language that judges a version's metrics, maybe against the champion's.

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

Metric values arrive as strings. A value counts as a number when `float()` accepts it and it is
finite; arithmetic and comparison then run in decimal, so that `0.94 >= champion.Accuracy + 0.01`
holds for a champion at 0.93 exactly as written (in binary floats 0.93 + 0.01 > 0.94).

Every comparison is evaluated, for the record. A missing value of the new version leaves the
verdict undecided (None); a comparison that needs the champion when there is none, or a metric
the champion lacks, counts as the caller's `no_champion_passes`; a division by zero makes its
comparison false.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from enum import Enum

from fleet.errors import ConfigError

# Parentheses, `not` and unary minus nested deeper than this are refused, so that a hostile or
# broken rule meets a RuleError rather than Python's recursion limit.
_MAX_NESTING = 50
# Decimal digits of intermediate results: more than any metric carries.
_PRECISION = 28

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Characters that may not follow a number directly: `1e`, `0.8and`, `1.2.3` are typos.
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]+")
_CHAMPION = "champion"
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
        return f"syntax error at column {column}: {self.reason} (in: {_one_line(self.text)})"


@dataclass(frozen=True, slots=True)
class Comparison:
    """One comparison as evaluated: what the approve/reject comment and the store show."""

    text: str
    left: float | None
    op: str
    right: float | None
    # None when a metric of the new version is missing.
    passed: bool | None
    # Why a side is unknown or the comparison was decided without comparing: "no champion",
    # "no value for Recall", "division by zero"; empty when the two sides were compared.
    note: str = ""

    def describe(self) -> str:
        outcome = "unknown" if self.passed is None else "pass" if self.passed else "FAIL"
        detail = f"{_show(self.left)} {self.op} {_show(self.right)}: {outcome}"
        if self.note:
            detail = f"{detail}, {self.note}"
        return f"{self.text} ({detail})"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rule's judgement of one version: None when a metric it needs is missing."""

    passed: bool | None
    comparisons: tuple[Comparison, ...]
    # Names without a numeric value, in rule order; the champion's prefixed with "champion.".
    missing: tuple[str, ...]

    def describe(self) -> str:
        """One line: each comparison with its values and outcome."""
        return "; ".join(c.describe() for c in self.comparisons)


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed approval rule; constructing one parses `text` and raises RuleError if it is bad."""

    text: str
    _condition: _Condition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_condition", _Parser(self.text).rule())

    @classmethod
    def parse(cls, text: str) -> Rule:
        return cls(text)

    def __str__(self) -> str:
        return self.text

    @property
    def uses_champion(self) -> bool:
        return any(ref.champion for ref in _metrics(self._condition))

    def evaluate(
        self,
        metrics: Mapping[str, str],
        champion: Mapping[str, str] | None,
        *,
        no_champion_passes: bool,
    ) -> Verdict:
        """Judge `metrics` (and the champion's, None when nothing is in production).

        Every comparison is evaluated, none short-circuited, so the verdict shows them all. A
        comparison that needs a champion metric nobody has is decided by `no_champion_passes`.
        """
        judge = _Judge(metrics, champion, no_champion_passes=no_champion_passes)
        nodes = list(_comparisons(self._condition))
        comparisons = tuple(judge.compare(node) for node in nodes)
        missing = tuple(dict.fromkeys(judge.missing))
        outcomes = {node: c.passed for node, c in zip(nodes, comparisons, strict=True)}
        # Any missing metric of the new version leaves the verdict open, even where `or` could
        # decide without it: a misspelt name in a rule must surface, not pass quietly forever.
        passed = None if None in outcomes.values() else _truth(self._condition, outcomes)
        return Verdict(passed, comparisons, missing)


# --- syntax tree ---------------------------------------------------------------------------------
# Every node carries its span in the rule's text (parentheses included), for error positions.


@dataclass(frozen=True, slots=True)
class _Number:
    value: Decimal
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Metric:
    name: str
    champion: bool
    start: int
    end: int

    @property
    def label(self) -> str:
        return f"{_CHAMPION}.{self.name}" if self.champion else self.name


@dataclass(frozen=True, slots=True)
class _Negative:
    operand: _Expression
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Chain:
    """`first op operand op operand ...` at one precedence level, flat so long sums stay shallow."""

    first: _Expression
    rest: tuple[tuple[str, _Expression], ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Compare:
    op: str
    left: _Expression
    right: _Expression
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Not:
    operand: _Condition
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Junction:
    op: str  # "and" or "or"
    operands: tuple[_Condition, ...]
    start: int
    end: int


_Expression = _Number | _Metric | _Negative | _Chain
_Condition = _Compare | _Not | _Junction
_Node = _Expression | _Condition


def _metrics(node: _Node) -> Iterator[_Metric]:
    match node:
        case _Metric():
            yield node
        case _Negative():
            yield from _metrics(node.operand)
        case _Not():
            yield from _metrics(node.operand)
        case _Chain():
            yield from _metrics(node.first)
            for _, operand in node.rest:
                yield from _metrics(operand)
        case _Compare():
            yield from _metrics(node.left)
            yield from _metrics(node.right)
        case _Junction():
            for condition in node.operands:
                yield from _metrics(condition)


def _comparisons(node: _Condition) -> Iterator[_Compare]:
    match node:
        case _Compare():
            yield node
        case _Not():
            yield from _comparisons(node.operand)
        case _Junction():
            for operand in node.operands:
                yield from _comparisons(operand)


def _truth(node: _Condition, outcomes: Mapping[_Compare, bool | None]) -> bool:
    match node:
        case _Compare():
            return bool(outcomes[node])
        case _Not():
            return not _truth(node.operand, outcomes)
        case _Junction():
            values = [_truth(operand, outcomes) for operand in node.operands]
            return all(values) if node.op == "and" else any(values)


# --- tokens --------------------------------------------------------------------------------------


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
    if lower == _CHAMPION:
        reason = "'champion' is reserved: write champion.NAME for the champion's metric"
        raise _error(text, at, reason)
    if not lower.startswith(f"{_CHAMPION}."):
        return _Token(_Kind.NAME, word, at, end, word)
    name_at = at + len(_CHAMPION) + 1
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


# --- parser --------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the token list, one method per precedence level."""

    __slots__ = ("_at", "_depth", "_text", "_tokens")

    def __init__(self, text: str) -> None:
        self._text = text
        if not text.strip():
            raise self._error(0, "empty rule")
        self._tokens = _tokens(text)
        self._at = 0
        self._depth = 0

    def rule(self) -> _Condition:
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

    def _or(self) -> _Node:
        return self._junction(_Kind.OR, self._and)

    def _and(self) -> _Node:
        return self._junction(_Kind.AND, self._not)

    def _junction(self, kind: _Kind, operand: Callable[[], _Node]) -> _Node:
        first = operand()
        if self._peek().kind is not kind:
            return first
        operands = [self._condition(first)]
        while self._peek().kind is kind:
            self._advance()
            operands.append(self._condition(operand()))
        return _Junction(kind.value, tuple(operands), first.start, operands[-1].end)

    def _not(self) -> _Node:
        token = self._peek()
        if token.kind is not _Kind.NOT:
            return self._comparison()
        if self._peek(1).is_op(*_COMPARISONS, "+", "*", "/"):
            raise self._error(token.start, _keyword_reason(token.text))
        self._advance()
        with self._nested(token):
            operand = self._condition(self._not())
        return _Not(operand, token.start, operand.end)

    def _comparison(self) -> _Node:
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
        text = _one_line(self._text[left.start : right.end])
        return _Compare(token.text, lhs, right, text, lhs.start, right.end)

    def _sum(self) -> _Node:
        return self._chain(("+", "-"), self._product)

    def _product(self) -> _Node:
        return self._chain(("*", "/"), self._unary)

    def _chain(self, ops: tuple[str, ...], operand: Callable[[], _Node]) -> _Node:
        first = operand()
        if not self._peek().is_op(*ops):
            return first
        start = self._expression(first)
        rest: list[tuple[str, _Expression]] = []
        while self._peek().is_op(*ops):
            op = self._advance().text
            rest.append((op, self._expression(operand())))
        return _Chain(start, tuple(rest), first.start, rest[-1][1].end)

    def _unary(self) -> _Node:
        token = self._peek()
        if not token.is_op("-"):
            return self._atom()
        self._advance()
        with self._nested(token):
            operand = self._expression(self._unary())
        return _Negative(operand, token.start, operand.end)

    def _atom(self) -> _Node:
        token = self._peek()
        match token.kind:
            case _Kind.NUMBER:
                self._advance()
                return _Number(Decimal(token.value), token.start, token.end)
            case _Kind.NAME | _Kind.CHAMPION:
                self._advance()
                champion = token.kind is _Kind.CHAMPION
                return _Metric(token.value, champion, token.start, token.end)
            case _Kind.OPERATOR if token.text == "(":
                return self._parenthesised(token)
            case _Kind.AND | _Kind.OR | _Kind.NOT if self._beside_operator():
                raise self._error(token.start, _keyword_reason(token.text))
        raise self._missing_operand(token)

    def _parenthesised(self, opening: _Token) -> _Node:
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

    def _condition(self, node: _Node) -> _Condition:
        if isinstance(node, _Compare | _Not | _Junction):
            return node
        raise self._error(
            node.end,
            "missing comparison: expected >=, <=, >, <, == or != after "
            f"{_quote(self._text[node.start : node.end])}",
        )

    def _expression(self, node: _Node) -> _Expression:
        if isinstance(node, _Number | _Metric | _Negative | _Chain):
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
    return f"'{_one_line(text)}'" if text else "the end of the rule"


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines())


# --- evaluation ----------------------------------------------------------------------------------

_COMPARE: dict[str, Callable[[Decimal, Decimal], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_ARITHMETIC: dict[str, Callable[[Context, Decimal, Decimal], Decimal]] = {
    "+": Context.add,
    "-": Context.subtract,
    "*": Context.multiply,
    "/": Context.divide,
}


class _Judge:
    """Evaluates the comparisons of one rule against one version's metrics (and the champion's)."""

    __slots__ = ("_champion", "_context", "_metrics", "_no_champion_passes", "missing")

    def __init__(
        self,
        metrics: Mapping[str, str],
        champion: Mapping[str, str] | None,
        *,
        no_champion_passes: bool,
    ) -> None:
        self._metrics = metrics
        self._champion = champion
        self._no_champion_passes = no_champion_passes
        # A context of its own: whatever the thread's decimal context says does not apply here.
        self._context = Context(prec=_PRECISION, traps=[DivisionByZero, InvalidOperation, Overflow])
        self.missing: list[str] = []

    def compare(self, node: _Compare) -> Comparison:
        lacking = [ref for ref in _metrics(node) if self._value(ref) is None]
        # With no champion at all, its metrics are not missing: there is nothing to miss them from.
        self.missing.extend(
            ref.label for ref in lacking if not ref.champion or self._champion is not None
        )
        left, left_problem = self._side(node.left)
        right, right_problem = self._side(node.right)
        passed, note = self._outcome(node, lacking, left, right, left_problem or right_problem)
        return Comparison(node.text, _float(left), node.op, _float(right), passed, note)

    def _outcome(
        self,
        node: _Compare,
        lacking: list[_Metric],
        left: Decimal | None,
        right: Decimal | None,
        problem: str,
    ) -> tuple[bool | None, str]:
        own = [ref.name for ref in lacking if not ref.champion]
        if own:
            return None, f"no value for {', '.join(own)}"
        if self._champion is None and any(ref.champion for ref in _metrics(node)):
            return self._no_champion_passes, "no champion"
        if lacking:
            return self._no_champion_passes, f"no value for {', '.join(r.label for r in lacking)}"
        if problem:
            return False, problem
        assert left is not None
        assert right is not None
        return _COMPARE[node.op](left, right), ""

    def _side(self, node: _Expression) -> tuple[Decimal | None, str]:
        try:
            value = self._calculate(node)
        except ZeroDivisionError:
            return None, "division by zero"
        except ArithmeticError:
            return None, "number out of range"
        if value is not None and not math.isfinite(float(value)):
            return None, "number out of range"
        return value, ""

    def _calculate(self, node: _Expression) -> Decimal | None:
        """The value of `node`; None when a metric in it has no value."""
        match node:
            case _Number():
                return node.value
            case _Metric():
                return self._value(node)
            case _Negative():
                value = self._calculate(node.operand)
                return None if value is None else self._context.minus(value)
            case _Chain():
                values = [self._calculate(node.first)]
                values.extend(self._calculate(operand) for _, operand in node.rest)
                known = [value for value in values if value is not None]
                if len(known) < len(values):
                    return None
                total = known[0]
                for (op, _), value in zip(node.rest, known[1:], strict=True):
                    total = _ARITHMETIC[op](self._context, total, value)
                return total

    def _value(self, ref: _Metric) -> Decimal | None:
        source = self._champion if ref.champion else self._metrics
        return None if source is None else _parse_value(source.get(ref.name))


def _parse_value(raw: object) -> Decimal | None:
    """A metric's value, or None when it is absent or not a finite number."""
    # Numbers are accepted too: a JSON round trip may have turned "0.9" into 0.9.
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return None
    try:
        text = raw.strip() if isinstance(raw, str) else repr(raw)
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # float() accepts it, Decimal() does not: keep float's reading
        return Decimal(number)


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _show(value: float | None) -> str:
    if value is None:
        return "?"
    text = repr(value)
    return text.removesuffix(".0")
