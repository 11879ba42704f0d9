"""Approval rules: a small language that judges a version's metrics, maybe against the champion's.

    Accuracy >= 0.8 and f1-score >= champion.f1-score * 0.98
    (Accuracy >= 0.8 or Recall >= 0.9) and not "mean absolute error" > 0.2

The language is parsed by `rule_syntax.py` (its docstring gives the grammar and the names);
this module judges a parsed rule against a version's metrics.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow

from fleet.rule_syntax import (
    Chain,
    Compare,
    Condition,
    Expression,
    Junction,
    Metric,
    Negative,
    Not,
    Number,
    Parser,
    comparisons_in,
    metrics_in,
)

# Decimal digits of intermediate results: more than any metric carries.
_PRECISION = 28


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
    _condition: Condition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_condition", Parser(self.text).rule())

    @classmethod
    def parse(cls, text: str) -> Rule:
        return cls(text)

    def __str__(self) -> str:
        return self.text

    @property
    def uses_champion(self) -> bool:
        return any(ref.champion for ref in metrics_in(self._condition))

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
        nodes = list(comparisons_in(self._condition))
        comparisons = tuple(judge.compare(node) for node in nodes)
        missing = tuple(dict.fromkeys(judge.missing))
        outcomes = {node: c.passed for node, c in zip(nodes, comparisons, strict=True)}
        # Any missing metric of the new version leaves the verdict open, even where `or` could
        # decide without it: a misspelt name in a rule must surface, not pass quietly forever.
        passed = None if None in outcomes.values() else _truth(self._condition, outcomes)
        return Verdict(passed, comparisons, missing)


# --- syntax tree ---------------------------------------------------------------------------------
# Every node carries its span in the rule's text (parentheses included), for error positions.


def _truth(node: Condition, outcomes: Mapping[Compare, bool | None]) -> bool:
    match node:
        case Compare():
            return bool(outcomes[node])
        case Not():
            return not _truth(node.operand, outcomes)
        case Junction():
            values = [_truth(operand, outcomes) for operand in node.operands]
            return all(values) if node.op == "and" else any(values)


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

    def compare(self, node: Compare) -> Comparison:
        lacking = [ref for ref in metrics_in(node) if self._value(ref) is None]
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
        node: Compare,
        lacking: list[Metric],
        left: Decimal | None,
        right: Decimal | None,
        problem: str,
    ) -> tuple[bool | None, str]:
        own = [ref.name for ref in lacking if not ref.champion]
        if own:
            return None, f"no value for {', '.join(own)}"
        if self._champion is None and any(ref.champion for ref in metrics_in(node)):
            return self._no_champion_passes, "no champion"
        if lacking:
            return self._no_champion_passes, f"no value for {', '.join(r.label for r in lacking)}"
        if problem:
            return False, problem
        assert left is not None
        assert right is not None
        return _COMPARE[node.op](left, right), ""

    def _side(self, node: Expression) -> tuple[Decimal | None, str]:
        try:
            value = self._calculate(node)
        except ZeroDivisionError:
            return None, "division by zero"
        except ArithmeticError:
            return None, "number out of range"
        if value is not None and not math.isfinite(float(value)):
            return None, "number out of range"
        return value, ""

    def _calculate(self, node: Expression) -> Decimal | None:
        """The value of `node`; None when a metric in it has no value."""
        match node:
            case Number():
                return node.value
            case Metric():
                return self._value(node)
            case Negative():
                value = self._calculate(node.operand)
                return None if value is None else self._context.minus(value)
            case Chain():
                values = [self._calculate(node.first)]
                values.extend(self._calculate(operand) for _, operand in node.rest)
                known = [value for value in values if value is not None]
                if len(known) < len(values):
                    return None
                total = known[0]
                for (op, _), value in zip(node.rest, known[1:], strict=True):
                    total = _ARITHMETIC[op](self._context, total, value)
                return total

    def _value(self, ref: Metric) -> Decimal | None:
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
