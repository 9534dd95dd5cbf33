"""Small offline tools for examples and tests. Pure functions; no network, no eval."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

_OPS: dict[type[ast.AST], Callable[..., Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ValueError("exponent too large")
        return float(_OPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_eval(node.operand)))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression (+ - * / ** % //, parentheses).

    Args:
        expression: e.g. "(12.5 * 4) / 3"
    """
    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")
    return _eval(ast.parse(expression, mode="eval"))


def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: the text to count
    """
    return len(text.split())


MARKET_FACTS = {
    "solid-state batteries": "Pilot lines at several automakers; mass production targeted for 2027-2030; "
                             "key hurdles are dendrites, manufacturing cost and supply of sulfide electrolytes.",
    "heat pumps": "EU sales fell in 2024 after a 2022 spike; policy subsidies drive demand; "
                  "Asian manufacturers compete on price.",
}


def lookup_facts(topic: str) -> str:
    """Look up offline background notes on a market topic (a stand-in for web search).

    Args:
        topic: the market or technology to look up
    """
    key = topic.lower().strip()
    for name, facts in MARKET_FACTS.items():
        if name in key or key in name:
            return facts
    return f"No stored notes on {topic!r}; reason from general knowledge and say so."
