"""ARM template expressions, syntax: the ``"[…]"`` language tokenized and parsed into an AST.

Deployment templates compute values with bracketed expressions
(https://learn.microsoft.com/azure/azure-resource-manager/templates/template-expressions):
a JSON string that starts with ``[`` and ends with ``]`` is an expression; ``[[`` at the start
escapes a literal ``[``. Inside: function calls, single-quoted strings (``''`` is a quote),
integers, ``true``/``false``/``null``, property access ``.name`` and indexing ``[0]`` / ``['x']``.

:class:`ExpressionError` is the one error of the whole ARM layer (syntax, functions, evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

_MAX_EXPR_DEPTH = 64  # nested calls; real templates use < 10
_MAX_EXPR_CHARS = 20_000
_DIGITS = "0123456789"  # str.isdigit() also takes '²' and other Unicode digits int() refuses


class ExpressionError(Exception):
    """An expression that cannot be evaluated locally; ``hint`` says what the user can do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class Literal:
    value: Any


@dataclasses.dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]


@dataclasses.dataclass(frozen=True)
class Member:
    target: Node
    name: str


@dataclasses.dataclass(frozen=True)
class Index:
    target: Node
    index: Node


Node = Literal | Call | Member | Index


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "(" ")" "[" "]" "," "." "str" "int" "ident" "end"
    value: Any
    pos: int


def is_expression(text: str) -> bool:
    """``[concat(…)]`` is an expression; ``[[literal]`` and ``[not closed`` are not."""
    return len(text) >= 2 and text[0] == "[" and text[-1] == "]" and text[1] != "["


def unescape_literal(text: str) -> str:
    """``[[x]`` → ``[x]``: ARM drops the doubled leading bracket of a literal string."""
    return text[1:] if text.startswith("[[") else text


def _tokenize(src: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        if ch.isspace():
            i += 1
        elif ch in "()[],.":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch == "'":
            start, i = i, i + 1
            out: list[str] = []
            while True:
                j = src.find("'", i)
                if j < 0:
                    raise ExpressionError(f"unterminated string literal at character {start + 1}")
                out.append(src[i:j])
                if j + 1 < n and src[j + 1] == "'":  # '' is an escaped quote
                    out.append("'")
                    i = j + 2
                    continue
                i = j + 1
                break
            tokens.append(_Token("str", "".join(out), start))
        elif ch in _DIGITS or (ch == "-" and i + 1 < n and src[i + 1] in _DIGITS):
            start, i = i, i + 1
            while i < n and src[i] in _DIGITS:
                i += 1
            if i - start > 20:
                raise ExpressionError(f"integer literal at character {start + 1} is too long")
            tokens.append(_Token("int", int(src[start:i]), start))
        elif ch.isalpha() or ch == "_":
            start = i
            while i < n and (src[i].isalnum() or src[i] in "_$"):
                i += 1
            tokens.append(_Token("ident", src[start:i], start))
        else:
            raise ExpressionError(f"unexpected character {ch!r} at character {i + 1}")
    tokens.append(_Token("end", None, n))
    return tokens


class _ExprParser:
    def __init__(self, src: str) -> None:
        self.tokens = _tokenize(src)
        self.k = 0

    def peek(self) -> _Token:
        return self.tokens[self.k]

    def take(self, kind: str) -> _Token:
        tok = self.tokens[self.k]
        if tok.kind != kind:
            found = "the end" if tok.kind == "end" else repr(tok.value)
            raise ExpressionError(f"expected {kind!r} at character {tok.pos + 1}, found {found}")
        self.k += 1
        return tok

    def parse(self) -> Node:
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise ExpressionError(f"unexpected {tok.value!r} at character {tok.pos + 1}")
        return node

    def expr(self, depth: int) -> Node:
        if depth > _MAX_EXPR_DEPTH:
            raise ExpressionError(f"expression nested deeper than {_MAX_EXPR_DEPTH} levels")
        tok = self.peek()
        node: Node
        if tok.kind in ("str", "int"):
            self.k += 1
            node = Literal(tok.value)
        elif tok.kind == "ident":
            self.k += 1
            name = tok.value
            # Namespaced user-defined functions: ns.func(…)
            if (
                self.peek().kind == "."
                and self.tokens[self.k + 1].kind == "ident"
                and self.tokens[self.k + 2].kind == "("
            ):
                self.k += 1
                name = f"{name}.{self.take('ident').value}"
            if self.peek().kind == "(":
                self.k += 1
                args: list[Node] = []
                if self.peek().kind != ")":
                    while True:
                        args.append(self.expr(depth + 1))
                        if self.peek().kind == ",":
                            self.k += 1
                            continue
                        break
                self.take(")")
                node = Call(name, tuple(args))
            elif name.lower() in ("true", "false", "null"):
                node = Literal({"true": True, "false": False, "null": None}[name.lower()])
            else:
                raise ExpressionError(
                    f"{name!r} at character {tok.pos + 1} is not a function call (missing '(…)'?)"
                )
        else:
            found = "the end of the expression" if tok.kind == "end" else repr(tok.value)
            raise ExpressionError(f"expected a value at character {tok.pos + 1}, found {found}")
        while True:
            tok = self.peek()
            if tok.kind == ".":
                self.k += 1
                node = Member(node, self.take("ident").value)
            elif tok.kind == "[":
                self.k += 1
                index = self.expr(depth + 1)
                self.take("]")
                node = Index(node, index)
            else:
                return node


def parse_expression(text: str) -> Node:
    """Parse the inside of ``[…]`` (the brackets already removed)."""
    if len(text) > _MAX_EXPR_CHARS:
        raise ExpressionError(f"expression of {len(text)} characters is too long")
    if not text.strip():
        raise ExpressionError("empty expression '[]'")
    return _ExprParser(text).parse()
