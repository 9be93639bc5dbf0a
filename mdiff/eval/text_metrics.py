"""Text metrics: a smoothed n-gram reference model (generative perplexity), token entropy, WER/CER.

The reference model is independent of the diffusion model: an interpolated Kneser-Ney n-gram over
token ids, fitted on the text training split. Generative perplexity of samples under it measures
how much they look like the training text; because a sampler can lower it by repeating a few likely
tokens, it is reported together with the entropy of the samples' token distribution.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Sequence

import numpy as np


class NgramLM:
    """Interpolated Kneser-Ney n-gram over integer tokens (order >= 1), with an add-one unigram floor.

    ``vocab_size`` fixes the base distribution, so every id has non-zero probability.
    Sequences get a start context of ``order - 1`` BOS pseudo-tokens (id -1).
    """

    def __init__(self, order: int = 3, vocab_size: int | None = None, discount: float = 0.75):
        if order < 1:
            raise ValueError(f"order={order}: must be >= 1")
        self.order, self.discount = order, discount
        self.vocab_size = vocab_size
        self.counts: list[collections.Counter] = [collections.Counter() for _ in range(order)]
        self.context_totals: list[collections.Counter] = [collections.Counter() for _ in range(order)]
        self.context_types: list[collections.Counter] = [collections.Counter() for _ in range(order)]
        self.continuations = collections.Counter()  # number of distinct left contexts of each token
        self.bigram_types = 0

    def fit(self, sequences: Iterable[Sequence[int]]) -> "NgramLM":
        seen_max = -1
        for seq in sequences:
            padded = [-1] * (self.order - 1) + [int(t) for t in seq]
            if len(seq):
                seen_max = max(seen_max, max(int(t) for t in seq))
            for i in range(self.order - 1, len(padded)):
                for n in range(1, self.order + 1):
                    gram = tuple(padded[i - n + 1 : i + 1])
                    if self.counts[n - 1][gram] == 0:
                        self.context_types[n - 1][gram[:-1]] += 1
                        if n == 2:
                            self.continuations[gram[-1]] += 1
                            self.bigram_types += 1
                    self.counts[n - 1][gram] += 1
                    self.context_totals[n - 1][gram[:-1]] += 1
        if self.vocab_size is None:
            self.vocab_size = seen_max + 1
        return self

    def _prob(self, context: tuple[int, ...], token: int) -> float:
        uniform = 1.0 / self.vocab_size
        if self.order == 1 or self.bigram_types == 0:
            total = self.context_totals[0][()]
            return (self.counts[0][(token,)] + 1.0) / (total + self.vocab_size)
        # Lowest level: continuation counts, interpolated with the uniform distribution.
        p = (self.continuations[token] + uniform * self.vocab_size * 0.01) / (self.bigram_types + self.vocab_size * 0.01)
        for n in range(2, self.order + 1):
            ctx = context[len(context) - (n - 1) :]
            total = self.context_totals[n - 1][ctx]
            if total == 0:
                continue
            count = self.counts[n - 1][ctx + (token,)]
            lam = self.discount * self.context_types[n - 1][ctx] / total
            p = max(count - self.discount, 0.0) / total + lam * p
        return p

    def log_prob(self, seq: Sequence[int]) -> float:
        """Natural-log probability of a sequence."""
        padded = [-1] * (self.order - 1) + [int(t) for t in seq]
        return sum(
            math.log(self._prob(tuple(padded[i - self.order + 1 : i]), padded[i])) for i in range(self.order - 1, len(padded))
        )

    def perplexity(self, sequences: Iterable[Sequence[int]]) -> float:
        total_lp, total_n = 0.0, 0
        for seq in sequences:
            total_lp += self.log_prob(seq)
            total_n += len(seq)
        if total_n == 0:
            raise ValueError("perplexity of no tokens")
        return math.exp(-total_lp / total_n)


def token_entropy(sequences: Iterable[Sequence[int]]) -> float:
    """Entropy (bits) of the empirical unigram distribution of all tokens in the sequences."""
    counts = collections.Counter(int(t) for seq in sequences for t in seq)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    p = np.array(list(counts.values()), np.float64) / total
    return float(-(p * np.log2(p)).sum())


# ---------------------------------------------------------------------------------------------
# Transcription-style scores
# ---------------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Lower case, letters/digits/apostrophes only, single spaces."""
    kept = "".join(c if c.isalnum() or c == "'" else " " for c in text.lower())
    return " ".join(kept.split())


def edit_distance(a: Sequence, b: Sequence) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def wer(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus word error rate: total word edits / total reference words (after `normalise`)."""
    edits = sum(edit_distance(normalise(h).split(), normalise(r).split()) for h, r in zip(hypotheses, references, strict=True))
    words = sum(len(normalise(r).split()) for r in references)
    return edits / max(words, 1)


def cer(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus character error rate (after `normalise`)."""
    edits = sum(edit_distance(normalise(h), normalise(r)) for h, r in zip(hypotheses, references, strict=True))
    chars = sum(len(normalise(r)) for r in references)
    return edits / max(chars, 1)


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    pairs = list(zip(hypotheses, references, strict=True))
    return sum(normalise(h) == normalise(r) for h, r in pairs) / max(len(pairs), 1)
