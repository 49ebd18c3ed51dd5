"""BERT's masking: 15% of the tokens (or of the words) are predicted; of those 80% become [MASK], 10% a
random token and 10% stay as they are.

Written here rather than taken from transformers' `DataCollatorForLanguageModeling` because exact
resume needs the mask to be a pure function of (seed, epoch, sequence): the collator draws from one
generator per batch, so its masks depend on how rows were batched and on what was drawn before.
Here each row gets its own generator seeded by (seed, epoch, row index).
"""

from __future__ import annotations

import numpy as np

IGNORE = -100  # label of tokens that are not predicted (PyTorch cross-entropy's ignore_index)


def mask_rows(input_ids: np.ndarray, word_start: np.ndarray, rows: np.ndarray, special_ids: list[int],
              mask_id: int, vocab_size: int, seed: int, epoch: int, probability: float = 0.15,
              whole_word: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Masked inputs and labels (IGNORE where not predicted) for `input_ids` (B, L), row `rows[b]` of the
    table; the same (seed, epoch, row) always gives the same mask."""
    masked = np.array(input_ids, dtype=np.int64, copy=True)
    labels = np.full(masked.shape, IGNORE, dtype=np.int64)
    candidates = ~np.isin(masked, special_ids)
    for b, row in enumerate(rows):
        rng = np.random.default_rng([seed, epoch, int(row)])
        chosen = _choose(candidates[b], word_start[b], rng, probability, whole_word)
        if not chosen.any():
            continue
        labels[b, chosen] = masked[b, chosen]
        action = rng.random(masked.shape[1])
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        masked[b, to_mask] = mask_id
        masked[b, to_random] = rng.integers(0, vocab_size, size=int(to_random.sum()))
    return masked, labels


def _choose(candidates: np.ndarray, word_start: np.ndarray, rng: np.random.Generator, probability: float,
            whole_word: bool) -> np.ndarray:
    """Which tokens of one row are predicted."""
    draw = rng.random(len(candidates))
    starts = candidates & word_start if whole_word else candidates
    picked = starts & (draw < probability)
    if not picked.any() and starts.any():  # a row with candidates always predicts something (BERT: max(1, 15%))
        picked[rng.choice(np.nonzero(starts)[0])] = True
    if not whole_word:
        return picked
    # whole words: a word is chosen when its first token is; its continuation tokens follow it
    word_id = np.cumsum(word_start) - 1  # index of the word each token belongs to
    chosen_words = np.zeros(max(int(word_id.max()) + 1, 1), dtype=bool)
    chosen_words[word_id[picked]] = True
    return candidates & (word_id >= 0) & chosen_words[np.maximum(word_id, 0)]
