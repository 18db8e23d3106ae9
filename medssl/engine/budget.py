"""A wall-clock budget's plan of the last training step (``pretrain.max_seconds``).

The learning-rate schedule (warm-up, cosine decay) and momentum schedules need the last step in
advance; a budget in seconds gives it only through the throughput. :class:`BudgetPlan` times
``PLAN_STEPS`` steps (after the first, which pays for allocation and warm-up), plans the last step,
and plans it again when ``REPLAN_AT`` fractions of the budget are spent, each time from the
throughput since the previous plan: data pipelines and CPU clocks settle over the first minutes,
so a plan from the first ten steps alone can end a 30-minute run minutes early or cut its cosine
short. Re-plans come early, where the cosine is flat, so they move the learning rate little (a plan
10% longer or shorter at a quarter of the run changes the learning rate by < 4%); a later slow-down
is left to the budget's stop.
Written by hand: no scheduler in torch or timm plans a schedule from a time budget.
"""

from __future__ import annotations

from medssl.engine.dist import rank_max

PLAN_STEPS = 10  # steps timed (after the first) before a budget plans the schedule
REPLAN_AT = (0.1, 0.25)  # fractions of the budget spent at which the plan is made again


class BudgetPlan:
    """The last step of a ``max_seconds`` budget, planned from measured throughput.

    ``cap``: the epochs' last step (never planned past); ``spent``: seconds of the budget already
    used (a resumed run's); ``planned``: the resumed run already has a plan (its checkpoint's).
    """

    def __init__(self, max_seconds: float, cap: int, spent: float = 0.0, planned: bool = False) -> None:
        self.max_seconds, self.cap, self.planned = max_seconds, cap, planned
        self.due = [f * max_seconds for f in REPLAN_AT if f * max_seconds > spent]
        self.mark: tuple[int, float] | None = None  # (step, clock) the current timing starts at

    def update(self, step: int, spent: float, now: float) -> int | None:
        """After ``step`` (``spent``: seconds of the budget used, the slowest rank's, so every rank
        plans at the same step; ``now``: this rank's clock): the new last step when one is planned
        now, else None. Every rank calls it at every step (``plan`` is a collective)."""
        if self.mark is None:  # the first step (after a start or resume) is not timed
            self.mark = (step, now)
            return None
        if step - self.mark[0] < PLAN_STEPS or (self.planned and not (self.due and spent >= self.due[0])):
            return None
        self.planned, self.due = True, [t for t in self.due if t > spent]
        (start, t0), self.mark = self.mark, (step, now)
        return plan(self.cap, step, (now - t0) / (step - start), self.max_seconds - spent)


def plan(total: int, step: int, seconds_per_step: float, seconds_left: float) -> int:
    """The last step of a budget: where ``seconds_per_step`` (the slowest rank's) reaches it,
    at most ``total`` (the epochs' plan) and at least this ``step``."""
    seconds_per_step = rank_max(seconds_per_step)
    return max(step, min(total, step + int(seconds_left / max(seconds_per_step, 1e-9))))
