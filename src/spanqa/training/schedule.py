"""The learning-rate schedule over a time budget (over a step count, the engine uses transformers'
`get_linear_schedule_with_warmup`).

With `--time-budget 30m` the schedule follows elapsed time instead of a step count guessed up front:
the learning rate warms up over the first `warmup_ratio` of the budget and falls linearly to zero at
its end, and the run stops there, leaving time for the final evaluation and the outputs. On a busy
machine a run simply takes fewer steps; it still ends, finished, on time. (A resumed budgeted run
continues from the elapsed time saved in its checkpoint, so it is not bit-identical to an
uninterrupted one: the steps it takes depend on the machine's speed.)
"""

from __future__ import annotations

def linear_factor(progress: float, warmup: float) -> float:
    """Learning-rate multiplier at `progress` in [0, 1]: up over `warmup`, then down to zero at 1."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / max(1.0 - warmup, 1e-12))


class TimeBudget:
    """Progress of a run as a share of its time budget, keeping back time for the final evaluation."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last_eval_seconds: float | None = None
        self.last_save_seconds = 0.0  # a checkpoint's write time: the final outputs cost about twice that
        self.factor = 0.0  # the learning-rate multiplier of the current optimizer step

    def reserve(self) -> float:
        """Seconds kept for the final evaluation and for writing outputs: the last evaluation's and twice the
        last checkpoint's time, with a margin; 15% of the budget before an evaluation has been timed."""
        if self.last_eval_seconds is None:
            return 0.15 * self.seconds
        return 1.25 * self.last_eval_seconds + 2 * self.last_save_seconds + min(30.0, 0.15 * self.seconds)

    def progress(self, elapsed: float) -> float:
        """Share of the budget (less the reserve) used after `elapsed` seconds, at most 1."""
        return min(1.0, elapsed / max(self.seconds - self.reserve(), 1e-9))
