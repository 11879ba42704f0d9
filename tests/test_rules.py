"""Approval rules: parsing, precedence, names, syntax errors with their column, and verdicts."""

from __future__ import annotations

import operator
import string
from collections.abc import Callable, Mapping
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import ConfigError
from fleet.rule_syntax import RuleError
from fleet.rules import Comparison, Rule, Verdict


def judge(
    text: str,
    metrics: Mapping[str, str],
    champion: Mapping[str, str] | None = None,
    *,
    no_champion_passes: bool = False,
) -> Verdict:
    return Rule.parse(text).evaluate(metrics, champion, no_champion_passes=no_champion_passes)


def error(text: str) -> RuleError:
    with pytest.raises(RuleError) as caught:
        Rule.parse(text)
    return caught.value


# --- the language --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Accuracy >= 0.8",
        "f1-score >= 0.7 and Accuracy > 0.9",
        "(Accuracy >= 0.8 or Recall >= 0.9) and not Precision < 0.5",
        "Accuracy >= champion.Accuracy + 0.01",
        "f1-score >= champion.f1-score * 0.98",
        '"mean absolute error" <= 0.2',
        'champion."mean absolute error" - "mean absolute error" >= 0',
        "RMSE <= 1e-3",
        "-0.5 < Skew",
    ],
)
def test_documented_examples_parse(text: str) -> None:
    """Every example of the documentation parses, and the rule keeps its text."""
    rule = Rule.parse(text)
    assert rule.text == text
    assert str(rule) == text


def test_and_binds_tighter_than_or() -> None:
    """`a or b and c` is `a or (b and c)`."""
    assert judge("a > 0 or b > 0 and c > 0", {"a": "1", "b": "0", "c": "0"}).passed is True


def test_not_binds_tighter_than_and() -> None:
    """`not a and b` is `(not a) and b`, and `not` applies to a whole comparison."""
    assert judge("not a > 0 and b > 0", {"a": "0", "b": "0"}).passed is False
    assert judge("not not a > 0", {"a": "1"}).passed is True


def test_parentheses_override_precedence() -> None:
    """Parentheses group `or` before `and`."""
    assert judge("(a > 0 or b > 0) and c > 0", {"a": "1", "b": "0", "c": "0"}).passed is False


def test_multiplication_binds_tighter_than_addition() -> None:
    """`a + b * c` multiplies first; parentheses change that."""
    assert judge("a + b * c == 7", {"a": "1", "b": "2", "c": "3"}).comparisons[0].left == 7
    assert judge("(a + b) * c == 9", {"a": "1", "b": "2", "c": "3"}).passed is True


def test_arithmetic_is_left_associative() -> None:
    """`a - b - c` is `(a - b) - c` and `a / b / c` is `(a / b) / c`."""
    assert judge("a - b - c == 0", {"a": "5", "b": "3", "c": "2"}).passed is True
    assert judge("a / b / c == 1", {"a": "8", "b": "4", "c": "2"}).passed is True


def test_unary_minus_binds_tighter_than_binary_operators() -> None:
    """`-a + b` negates `a` only; `a - -b` subtracts a negative number."""
    assert judge("-a + b == 2", {"a": "1", "b": "3"}).passed is True
    assert judge("a - -b == 5", {"a": "2", "b": "3"}).passed is True
    assert judge("-0.5 < Skew", {"Skew": "-0.4"}).passed is True


def test_arithmetic_is_decimal_so_thresholds_hold_as_written() -> None:
    """0.94 >= 0.93 + 0.01 passes, which binary floating point would get wrong."""
    verdict = judge(
        "Accuracy >= champion.Accuracy + 0.01", {"Accuracy": "0.94"}, {"Accuracy": "0.93"}
    )
    assert verdict.passed is True
    assert verdict.comparisons[0].right == 0.94


def test_dash_inside_a_name_joins_it() -> None:
    """`f1-score` is one name, and so is `Accuracy-0.01`; `Accuracy - 0.01` subtracts."""
    assert judge("f1-score >= 0.7", {"f1-score": "0.8"}).passed is True
    assert judge("Accuracy-0.01 > 0", {"Accuracy": "0.9"}).missing == ("Accuracy-0.01",)
    assert judge("Accuracy - 0.01 > 0.88", {"Accuracy": "0.9"}).passed is True


def test_names_with_dots_and_quoted_names() -> None:
    """Dots belong to bare names; anything else is quoted, with backslash escapes."""
    assert judge("class.0.recall > 0.5", {"class.0.recall": "0.6"}).passed is True
    assert judge('"mean absolute error" <= 0.2', {"mean absolute error": "0.1"}).passed is True
    metrics = {'say "hi"': "1", "a\\b": "2"}
    verdict = Rule.parse('"say \\"hi\\"" < "a\\\\b"').evaluate(
        metrics, None, no_champion_passes=False
    )
    assert verdict.passed is True


def test_names_are_case_sensitive() -> None:
    """A metric is looked up exactly as written in the rule."""
    assert judge("accuracy > 0.5", {"Accuracy": "0.9"}).missing == ("accuracy",)


def test_keywords_are_case_insensitive() -> None:
    """`AND`, `Or` and `NOT` are keywords like their lower-case forms."""
    assert judge("a > 0 AND b > 0", {"a": "1", "b": "1"}).passed is True
    assert judge("a > 0 Or b > 0", {"a": "0", "b": "1"}).passed is True
    assert judge("NOT a > 0", {"a": "0"}).passed is True


def test_keywords_inside_longer_names_or_quoted_are_names() -> None:
    """`android` and `not-ok` are names, and a quoted keyword names a metric."""
    assert judge("android > 0 and not-ok > 0", {"android": "1", "not-ok": "1"}).passed is True
    assert judge('"and" > 0', {"and": "1"}).passed is True


def test_champion_references() -> None:
    """`champion.NAME` and `champion."quoted"` read the champion's metrics, in any case."""
    champion = {"f1-score": "0.8", "mean absolute error": "0.3"}
    text = 'f1-score >= champion.f1-score * 0.98 and champion."mean absolute error" > mae'
    verdict = judge(text, {"mae": "0.2", "f1-score": "0.79"}, champion)
    assert verdict.passed is True
    assert judge("a >= Champion.a", {"a": "0.6"}, {"a": "0.5"}).passed is True


def test_uses_champion() -> None:
    """A rule knows whether it needs the champion's metrics."""
    assert Rule.parse("Accuracy >= champion.Accuracy").uses_champion
    assert not Rule.parse('Accuracy >= 0.8 and "champion" > 1').uses_champion


def test_rules_compare_by_text() -> None:
    """Two rules of the same text are equal and hash alike."""
    assert Rule.parse("a > 1") == Rule("a > 1")
    assert len({Rule.parse("a > 1"), Rule.parse("a > 1"), Rule.parse("a > 2")}) == 2


# --- syntax errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("Accuracy >= 0.8 & Recall > 1", 16, "unexpected character '&'"),
        ("Accuracy = 0.8", 9, "write '=='"),
        ("Précision > 0.8", 2, "unexpected character 'é'"),
        ('"mean absolute error <= 0.2', 0, "unterminated quoted name"),
        ('"" > 1', 0, "empty quoted name"),
        ("", 0, "empty rule"),
        ("  \n ", 0, "empty rule"),
        ("(Accuracy >= 0.8 or Recall > 0.9", 0, "unbalanced parenthesis: '(' is never closed"),
        ("Accuracy >= 0.8)", 15, "unbalanced parenthesis: ')' without a matching '('"),
        ("(a > 1 b > 2)", 7, "expected ')' to close the '(' at column 1, found 'b'"),
        ("Accuracy >=", 11, "missing operand after '>='"),
        (">= 0.8", 0, "missing operand before '>='"),
        ("a > 1 and", 9, "missing operand after 'and'"),
        ("a >= ()", 6, "missing operand after '('"),
        ("Accuracy", 8, "missing comparison"),
        ("Accuracy + 1", 12, "missing comparison"),
        ("a > 1 and b", 11, "missing comparison: expected >=, <=, >, <, == or != after 'b'"),
        ("not Accuracy", 12, "missing comparison"),
        ("Accuracy 0.8", 8, "missing comparison"),
        ("Accuracy >= 0.8 + (Recall > 1)", 18, "a comparison is not a number: '(Recall > 1)'"),
        ("(a > 1) >= 1", 0, "a comparison is not a number"),
        ("0 < Accuracy < 1", 13, "chained comparison"),
        ("Accuracy >= 0.8 Recall >= 0.9", 16, "unexpected 'Recall' after a complete condition"),
        ("and >= 0.8", 0, "'and' is a keyword, not a metric name"),
        ("a >= OR", 5, "'OR' is a keyword, not a metric name"),
        ("not >= 0.8", 0, "'not' is a keyword, not a metric name"),
        ("champion.and > 1", 9, "'and' is a keyword, not a metric name"),
        ("champion > 1", 0, "'champion' is reserved"),
        ("a >= champion.", 14, "'champion.' must be followed by a metric name"),
        ("a >= champion. a", 14, "'champion.' must be followed by a metric name"),
        ("a >= champion.-a", 14, "'champion.' must be followed by a metric name"),
        ("a > 1e", 4, "malformed number '1e'"),
        ("a > 0.8and b > 1", 4, "malformed number '0.8and'"),
        ("a > 1e999", 4, "number out of range"),
        ("(" * 51 + "a > 1" + ")" * 51, 50, "nested more than 50 levels deep"),
    ],
)
def test_syntax_errors_name_the_column_and_reason(text: str, position: int, reason: str) -> None:
    """Each kind of syntax error points at the right place and says what is wrong."""
    err = error(text)
    assert err.position == position
    assert reason in err.reason
    assert err.text == text


def test_error_message_is_one_line_with_column_and_text() -> None:
    """str(RuleError) is `syntax error at column N: reason (in: text)` on one line."""
    assert str(error("Accuracy >= 0.8 &")) == (
        "syntax error at column 17: unexpected character '&' (in: Accuracy >= 0.8 &)"
    )
    assert "\n" not in str(error("Accuracy >=\n  0.8 &"))


def test_rule_error_is_a_value_error_and_a_config_error() -> None:
    """Pydantic validators report a ValueError; the CLI maps a ConfigError to its exit code."""
    err = error("Accuracy")
    assert isinstance(err, ValueError)
    assert isinstance(err, ConfigError)


def test_constructing_a_rule_parses_it() -> None:
    """`Rule(text)` validates as `Rule.parse(text)` does, so no Rule holds a bad text."""
    with pytest.raises(RuleError):
        Rule("Accuracy >")


# --- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [(" 0.90 ", 0.9), ("1e-3", 0.001), ("-2", -2.0), ("+.5", 0.5), ("1_000", 1000.0)],
)
def test_metric_strings_become_numbers(raw: str, value: float) -> None:
    """Values are read as float() reads them, surrounding whitespace and all."""
    assert judge("m > -1e9", {"m": raw}).comparisons[0].left == value


@pytest.mark.parametrize("raw", ["abc", "nan", "NaN", "inf", "-infinity", "", "  ", "0x10"])
def test_values_that_are_not_finite_numbers_are_missing(raw: str) -> None:
    """A value float() refuses, or a nan or infinity, counts as missing."""
    verdict = judge("m > 0", {"m": raw})
    assert verdict.passed is None
    assert verdict.missing == ("m",)


def test_numbers_from_json_are_accepted() -> None:
    """A value that arrives as a number rather than a string still counts."""
    verdict = Rule.parse("m > 0.5").evaluate({"m": 0.9}, None, no_champion_passes=False)  # type: ignore[dict-item]
    assert verdict.passed is True


# --- verdicts ------------------------------------------------------------------------------------


def test_describe_lists_every_comparison_with_values_and_outcome() -> None:
    """describe() is one line: each comparison, its two values and pass or FAIL."""
    verdict = judge("Accuracy >= 0.8 and f1-score >= 0.7", {"Accuracy": "0.94", "f1-score": "0.61"})
    assert verdict.passed is False
    assert verdict.describe() == (
        "Accuracy >= 0.8 (0.94 >= 0.8: pass); f1-score >= 0.7 (0.61 >= 0.7: FAIL)"
    )


def test_every_comparison_is_evaluated_without_short_circuit() -> None:
    """A passing first operand of `or` does not hide the others from the verdict."""
    verdict = judge("a > 0 or b > 0 or c > 0", {"a": "1", "b": "0", "c": "0"})
    assert [c.passed for c in verdict.comparisons] == [True, False, False]
    assert verdict.comparisons[1] == Comparison("b > 0", 0.0, ">", 0.0, passed=False)


def test_comparison_text_is_its_source_on_one_line() -> None:
    """A comparison is shown as written, parentheses of its operands kept, newlines folded."""
    verdict = judge("(a + 1) * 2 >=\n  champion.a and (b < 1)", {"a": "1", "b": "0"}, {"a": "1"})
    assert [c.text for c in verdict.comparisons] == ["(a + 1) * 2 >= champion.a", "b < 1"]


def test_missing_metric_leaves_the_verdict_open() -> None:
    """A missing metric of the new version makes passed None, even where `or` could decide."""
    verdict = judge("Accuracy > 0.5 or Recall > 0.5", {"Accuracy": "0.9"})
    assert verdict.passed is None
    assert verdict.missing == ("Recall",)
    assert verdict.comparisons[1].passed is None
    assert "Recall > 0.5 (? > 0.5: unknown, no value for Recall)" in verdict.describe()


def test_missing_names_are_listed_once_in_rule_order() -> None:
    """Each missing name appears once, in the order the rule mentions it."""
    verdict = judge("b > 0 and a > 0 and b < 1 and champion.c > 0", {}, {}, no_champion_passes=True)
    assert verdict.missing == ("b", "a", "champion.c")


@pytest.mark.parametrize("allow", [True, False])
def test_no_champion_decides_champion_comparisons(allow: bool) -> None:
    """With nothing in production, each champion comparison counts as no_champion_passes."""
    text = "Accuracy >= 0.8 and Accuracy >= champion.Accuracy"
    verdict = judge(text, {"Accuracy": "0.9"}, None, no_champion_passes=allow)
    assert verdict.passed is allow
    assert verdict.missing == ()
    assert verdict.comparisons[1] == Comparison(
        "Accuracy >= champion.Accuracy", 0.9, ">=", None, passed=allow, note="no champion"
    )


def test_no_champion_still_enforces_absolute_thresholds() -> None:
    """Allowing a first version does not let it past an absolute threshold."""
    text = "Accuracy >= 0.8 and Accuracy >= champion.Accuracy"
    assert judge(text, {"Accuracy": "0.7"}, None, no_champion_passes=True).passed is False


def test_champion_missing_a_metric() -> None:
    """A champion without the metric decides that comparison by no_champion_passes and says so."""
    text = "Accuracy >= champion.Accuracy"
    allowed = judge(text, {"Accuracy": "0.9"}, {"Recall": "0.9"}, no_champion_passes=True)
    assert allowed.passed is True
    assert allowed.missing == ("champion.Accuracy",)
    assert allowed.describe() == (
        "Accuracy >= champion.Accuracy (0.9 >= ?: pass, no value for champion.Accuracy)"
    )
    rejected = judge(text, {"Accuracy": "0.9"}, {"Accuracy": "nan"}, no_champion_passes=False)
    assert rejected.passed is False
    assert rejected.missing == ("champion.Accuracy",)


def test_division_by_zero_makes_the_comparison_false() -> None:
    """x / 0 and 0 / 0 fail their comparison, described as division by zero, without raising."""
    verdict = judge("a / b > 1 or b / b == 1 or a > 0", {"a": "1", "b": "0"})
    assert [c.passed for c in verdict.comparisons] == [False, False, True]
    assert verdict.passed is True
    assert verdict.describe().startswith("a / b > 1 (? > 1: FAIL, division by zero)")


def test_deepest_allowed_nesting_evaluates() -> None:
    """Rules nested up to the limit parse and evaluate without hitting the recursion limit."""
    metrics = {"a": "2"}
    assert judge("(" * 50 + "a > 1" + ")" * 50, metrics).passed is True
    assert judge("not " * 50 + "a > 1", metrics).passed is True
    assert judge("- " * 50 + "a > 1", metrics).passed is True
    assert judge(" + ".join(["a"] * 2000) + " > 1", metrics).passed is True


# --- fuzzing -------------------------------------------------------------------------------------

# Characters of the language, weighted towards its words, so that random text often parses.
_RULE_PIECES = st.sampled_from(
    [*'ab_.-+*/()<>=!" 01e\\', ">=", "==", " and ", " or ", " not ", "champion.", "1.5", "a-b"]
)


def _parse(text: str) -> Rule | RuleError:
    try:
        return Rule.parse(text)
    except RuleError as err:
        return err


def _check(text: str) -> None:
    rule = _parse(text)
    if isinstance(rule, RuleError):
        assert 0 <= rule.position <= len(text)
        assert "\n" not in str(rule)
        return
    metrics = {"a": "1", "b": "0", "a-b": "x", "_": "2"}
    for champion in (None, {"a": "0.5"}):
        verdict = rule.evaluate(metrics, champion, no_champion_passes=True)
        assert "\n" not in verdict.describe()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=60))
def test_random_printable_text_parses_or_raises_rule_error(text: str) -> None:
    """Any printable text is a rule or a RuleError, never another exception."""
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(_RULE_PIECES, max_size=25).map("".join))
def test_random_rule_like_text_parses_or_raises_rule_error(text: str) -> None:
    """Text built from the language's own pieces parses, or fails as a RuleError, and evaluates."""
    _check(text)


# Random well-formed rules with the value they must have, written with only the parentheses that
# precedence requires: `(text, value, precedence)`, where a higher precedence binds tighter.
_Piece = tuple[str, Fraction, int]
_Truth = tuple[str, bool, int]
_METRICS = {"a": "1.5", "b": "-2"}
_CHAMPION_METRICS = {"a": "0.25"}
_ARITHMETIC: dict[str, tuple[Callable[[Fraction, Fraction], Fraction], int]] = {
    "+": (operator.add, 1),
    "-": (operator.sub, 1),
    "*": (operator.mul, 2),
}
_COMPARE: dict[str, Callable[[Fraction, Fraction], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_UNARY, _ATOM = 3, 4
_NOT, _COMPARISON = 3, 4


def _wrap(text: str, inner: int, needed: int) -> str:
    return f"({text})" if inner < needed else text


def _binary(parts: tuple[_Piece, str, _Piece]) -> _Piece:
    (left, lvalue, lprec), op, (right, rvalue, rprec) = parts
    apply, prec = _ARITHMETIC[op]
    # Left-associative: a right operand of the same level needs parentheses, a left one does not.
    text = f"{_wrap(left, lprec, prec)} {op} {_wrap(right, rprec, prec + 1)}"
    return text, apply(lvalue, rvalue), prec


def _negative(piece: _Piece) -> _Piece:
    return f"-{_wrap(piece[0], piece[2], _UNARY)}", -piece[1], _UNARY


_ATOMS = st.one_of(
    st.sampled_from([("a", 1.5), ("b", -2), ("champion.a", 0.25)]).map(
        lambda atom: (atom[0], Fraction(atom[1]), _ATOM)
    ),
    st.integers(0, 999).map(lambda n: (f"{n // 100}.{n % 100:02d}", Fraction(n, 100), _ATOM)),
)
_NUMBERS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(list(_ARITHMETIC)), inner).map(_binary),
        inner.map(_negative),
    ),
    max_leaves=6,
)


def _comparison(parts: tuple[_Piece, str, _Piece]) -> _Truth:
    (left, lvalue, _), op, (right, rvalue, _) = parts
    return f"{left} {op} {right}", _COMPARE[op](lvalue, rvalue), _COMPARISON


def _junction(parts: tuple[_Truth, str, _Truth]) -> _Truth:
    (left, lvalue, lprec), op, (right, rvalue, rprec) = parts
    prec = 1 if op.lower() == "or" else 2
    value = (lvalue or rvalue) if prec == 1 else (lvalue and rvalue)
    return f"{_wrap(left, lprec, prec)} {op} {_wrap(right, rprec, prec)}", value, prec


def _negation(truth: _Truth) -> _Truth:
    return f"not {_wrap(truth[0], truth[2], _NOT)}", not truth[1], _NOT


_CONDITIONS = st.recursive(
    st.tuples(_NUMBERS, st.sampled_from(list(_COMPARE)), _NUMBERS).map(_comparison),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or", "AND", "Or"]), inner).map(_junction),
        inner.map(_negation),
    ),
    max_leaves=5,
)


@settings(max_examples=150, deadline=None)
@given(_CONDITIONS, st.integers(min_value=0))
def test_random_rules_evaluate_as_precedence_says(condition: _Truth, cut: int) -> None:
    """A rule with minimal parentheses has the value precedence gives it; a typo is a RuleError."""
    text, value, _ = condition
    verdict = Rule.parse(text).evaluate(_METRICS, _CHAMPION_METRICS, no_champion_passes=False)
    assert verdict.passed is value
    cut %= len(text)
    _check(text[:cut] + text[cut + 1 :])
