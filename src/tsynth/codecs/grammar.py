"""Constrained decoding of chat answers: only tokens that keep the text a valid answer may be drawn.

:class:`AnswerGrammar` is a character-level state machine of the :class:`~tsynth.codecs.chat.ChatCodec`'s
answer in its canonical JSON form, ``{"consumption": [-1.507, 0.25, ...]}`` (one key per channel for
multivariate data): exactly ``length`` numbers per key, each ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?`` with at
most ``int_digits`` integer and ``decimals`` fraction digits, so every number is finite. With
``compact`` (the codec's compact and integer styles) the text has no spaces,
``{"consumption":[-1507,250]}``, and ``decimals=0`` allows no fraction at all.

:class:`TokenConstraint` lifts it to a tokenizer's vocabulary: the token texts are computed once and
kept in a trie; the allowed tokens of a state are found by walking the trie with the state machine
(cached per state), and the end-of-turn token is allowed only once the answer is complete.
"""

from __future__ import annotations

import json
from typing import Sequence

import torch

from ..errors import ConfigError

# number phases: expecting its first char, after '-', after a leading '0', in the integer part,
# after '.', in the fraction; SEP: after ',' (expects ' '); LIT: inside a fixed piece of text
START, NEG, ZERO, INT, DOT, FRAC, SEP, LIT = range(8)
DIGITS = "0123456789"

State = tuple[int, int, int, int]  # (phase, channel or literal index, numbers left in the list, digits or chars)


class AnswerGrammar:
    """The canonical answer for ``keys``, ``length`` numbers each, as a character-level state machine."""

    def __init__(self, keys: Sequence[str], length: int, decimals: int, int_digits: int = 15,
                 compact: bool = False) -> None:
        if length < 1 or int_digits < 1:
            raise ConfigError(f"length and int_digits must be at least 1, got {length} and {int_digits}")
        self.length, self.int_digits, self.compact = int(length), int(int_digits), compact
        # json.dumps writes 2.0 for a float even at 0 decimals; the compact text writes 2
        self.frac_digits = int(decimals) if compact else max(int(decimals), 1)
        keys = [json.dumps(k) for k in keys]
        # the fixed text before each list and after the last one; each piece after the first opens with ']'
        colon, comma = (":", ",") if compact else (": ", ", ")
        self.literals = ["{" + keys[0] + colon + "["] + [f"]{comma}{k}{colon}[" for k in keys[1:]] + ["]}"]
        self.start: State = (LIT, 0, 0, 0)

    @property
    def alphabet(self) -> set[str]:
        return set(DIGITS + "-,]" + ("." if self.frac_digits else "") + ("" if self.compact else " ")
                   ).union(*self.literals)

    def done(self, s: State) -> bool:
        return s == (LIT, len(self.literals) - 1, 0, len(self.literals[-1]))

    def step(self, s: State, ch: str) -> State | None:
        """The state after ``ch``, or None where ``ch`` cannot follow."""
        phase, c, left, n = s
        if phase == LIT:
            text = self.literals[c]
            if n >= len(text) or ch != text[n]:
                return None
            if n + 1 == len(text) and c + 1 < len(self.literals):
                return START, c, self.length, 0
            return LIT, c, 0, n + 1
        if phase == SEP:
            return (START, c, left, 0) if ch == " " else None
        if ch in DIGITS:
            if phase in (START, NEG):
                return (ZERO if ch == "0" else INT), c, left, 1
            if phase == INT and n < self.int_digits:
                return INT, c, left, n + 1
            if phase == DOT or (phase == FRAC and n < self.frac_digits):
                return FRAC, c, left, (n + 1 if phase == FRAC else 1)
            return None
        if ch == "-":
            return (NEG, c, left, 0) if phase == START else None
        if ch == ".":
            return (DOT, c, left, 0) if phase in (ZERO, INT) and self.frac_digits else None
        if phase not in (ZERO, INT, FRAC):  # the number is not complete yet
            return None
        if ch == "," and left > 1:
            return (START if self.compact else SEP), c, left - 1, 0
        if ch == "]" and left == 1:
            return LIT, c + 1, 0, 1
        return None

    def walk(self, s: State | None, text: str) -> State | None:
        for ch in text:
            if s is None:
                return None
            s = self.step(s, ch)
        return s


class TokenConstraint:
    """Allowed next tokens of a batch of partial answers, for a vocabulary of token texts.

    ``texts[i]`` is the text token ``i`` adds ("" for special tokens, which are never allowed);
    ``end_id`` is the end-of-turn token that must follow the complete answer.
    """

    def __init__(self, grammar: AnswerGrammar, texts: Sequence[str], end_id: int) -> None:
        self.grammar, self.texts, self.end_id = grammar, list(texts), int(end_id)
        alphabet = grammar.alphabet
        have = {t for t in self.texts if len(t) == 1}
        missing = sorted(alphabet - have)
        if missing:
            raise ConfigError(f"the tokenizer has no single-character token for {missing}: it cannot write "
                              "every answer")
        self.trie: dict = {}
        most_commas = 0
        for i, t in enumerate(self.texts):
            if t and set(t) <= alphabet:
                node = self.trie
                for ch in t:
                    node = node.setdefault(ch, {})
                node.setdefault("", []).append(i)
                most_commas = max(most_commas, t.count(","))
        # a list's remaining count matters to a token only when the token could reach the list's end
        self.cap = most_commas + 2
        self.cache: dict[State, torch.Tensor] = {}

    def allowed(self, s: State) -> torch.Tensor:
        """Ids of the tokens allowed in state ``s``."""
        phase, c, left, n = s
        key = (phase, c, min(left, self.cap), n)
        if key not in self.cache:
            if self.grammar.done(s):
                ids = [self.end_id]
            else:
                ids, stack = [], [(self.trie, key)]
                while stack:
                    node, state = stack.pop()
                    for ch, child in node.items():
                        nxt = self.grammar.step(state, ch) if ch else None
                        if nxt is not None:
                            ids.extend(child.get("", ()))
                            stack.append((child, nxt))
            self.cache[key] = torch.tensor(sorted(ids), dtype=torch.long)
        return self.cache[key]

    def mask(self, states: Sequence[State], vocab_size: int) -> torch.Tensor:
        """Boolean (batch, vocab_size): True where a row's next token is allowed."""
        out = torch.zeros(len(states), vocab_size, dtype=torch.bool)
        for row, s in enumerate(states):
            out[row, self.allowed(s)] = True
        return out

    def advance(self, s: State, token: int) -> State:
        """The state after ``token`` (which must be allowed)."""
        nxt = self.grammar.walk(s, self.texts[token])
        if nxt is None:
            raise ValueError(f"token {token} ({self.texts[token]!r}) is not allowed here")
        return nxt
