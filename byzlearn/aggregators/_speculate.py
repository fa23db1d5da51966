"""A subset rule's output written during its Gram pass, when the first blocks already decide it.

Multi-Krum, MDA and CGE (and Krum or the medoid after NNM) output a mean of inputs chosen from
the distances: their weights over the inputs take a few discrete values. Under an attack that
stands apart (the -10 x mean attack, large noise, NaN rows), or when honest inputs differ in
spread, the Gram matrix of a few blocks of coordinates already gives the weights the full matrix
gives. For a rule whose parts are all ``guessable`` (:func:`._registry.register`), the Gram pass
then (CPU kernel, inputs of
``MIN_BLOCKS`` blocks or more, the rule called on fresh vectors, not on a shared
:func:`~byzlearn.aggregators.prepare`):

1. runs the first ``HEAD_BLOCKS`` blocks and calls the rule on the Gram matrix of each block
   and of the blocks together (n x n work each); when all these calls give the same weights
   (``guess``), the pass
2. runs the other blocks while writing ``sum_i w_i x_i`` over their coordinates, span by span
   while the span is in the cache (:func:`._gram_kernel.gram_blocks`), so that the kept rows
   are not read from memory a second time there;
3. after the pass the rule runs on the full matrix as always; where its weights equal the
   guess to the bit, :meth:`Speculation.output` sums the first blocks' coordinates only and
   returns the output, else the guess is dropped and the output is formed as without it.

The output has the bits of the weighted sum without the guess (the same float64 sums in the
same order, :func:`._gram_kernel._rows_sum`), whatever the guess; a wrong guess costs the sums
written in the pass (about 0.4 of a read of the input at 25 rows), a right one saves all but
the first blocks' part of a second read of the kept rows. On inputs whose blocks disagree
(identically distributed honest rows, any n - f of which are as good: the kept rows then differ
from block to block) nothing is guessed and nothing is paid beyond the rule's n x n calls,
which stop at the first disagreement and within ``GUESS_BUDGET`` of the pass's time (MDA's
search also within ``mda.GUESS_BRANCHES`` branches).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from byzlearn.aggregators import _gram_kernel

if TYPE_CHECKING:
    from byzlearn.aggregators._gram import BaseGram

# The first blocks, whose Gram matrices the rule is called on (one by one and together): an
# even number, so that two threads share them evenly.
HEAD_BLOCKS = 4
# Fewest blocks of the pass for a guess: the first blocks' share of the output, read again when
# the guess holds, is then at most a quarter.
MIN_BLOCKS = 16
# The calls of the rule on the first blocks' Gram matrices may take about this share of the
# pass's time (estimated from the first blocks'), against the sixth or so of it that a right
# guess saves (calls that disagree stop at the first that does): Multi-Krum, CGE, Krum about
# 0.2 ms a call at 25 to 100 rows, MDA 0.9 ms at 25 rows, 5 ms at 100 (its search bounded,
# mda.GUESS_BRANCHES); the pass of 25 x 1e7 float32 values takes about 140 ms on one core.
GUESS_BUDGET = 0.1

# The rule's weights over the base rows (float64, (n,)) on a Gram matrix, or None (no guess).
Guess = Callable[["BaseGram"], "torch.Tensor | None"]


@dataclass
class Speculation:
    """The output ``sum_i weights_i x_i`` written from coordinate ``start`` on, during the pass;
    used once (:meth:`output`)."""

    weights: torch.Tensor  # float64 (n,): the guessed weights over the base rows
    out: torch.Tensor | None  # (d,), the input's dtype; None once used
    start: int

    def sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kernel's ``sums`` argument (:func:`._gram_kernel.gram_blocks`)."""
        assert self.out is not None
        return self._terms(self.out)

    def _terms(self, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows with a non-zero weight, their weights (:func:`._gram_kernel.used_rows`, the
        terms of the sum without a guess), and ``out`` as numpy arrays."""
        rows, weights = _gram_kernel.used_rows(self.weights.numpy())
        return rows, weights, out.numpy()

    def output(self, X: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """The output for the rule's final ``weights`` when they are the guess (the first
        coordinates summed now), else None; the buffer is handed out once."""
        if self.out is None or not torch.equal(weights, self.weights):
            return None
        out, self.out = self.out, None
        rows, w, buffer = self._terms(out)
        _gram_kernel.weighted_sum(
            X.detach().numpy(), rows, w, torch.get_num_threads(), out=buffer, end=self.start
        )
        return out


def agreed_weights(guess: Guess, grams: list[BaseGram], budget: float) -> torch.Tensor | None:
    """The weights ``guess`` gives on every one of ``grams``, when it gives the same ones (to the
    bit) on all, over at least two rows; else None, at the first call that disagrees, or once
    the calls have taken ``budget`` seconds (a rule whose n x n work is dear: MDA's subset
    search on many rows)."""
    start = time.perf_counter()
    agreed: torch.Tensor | None = None
    for gram in grams:
        if time.perf_counter() - start > budget:
            return None
        w = guess(gram)
        if w is None or (agreed is not None and not torch.equal(w, agreed)):
            return None
        if agreed is None and int(torch.count_nonzero(w)) < 2:
            return None  # one row (Krum, the medoid): its copy costs less than sums in the pass
        agreed = w
    return agreed
