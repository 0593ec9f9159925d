"""Fitting a run's step count to a wall-time budget: pace in, steps out.

A budgeted run times a few scratch steps and fits its step count to the time left
(:meth:`StepBudget.fit`); then it re-fits twice from the pace of its own steps, since the
scratch steps can be off by a third on a machine still settling: a tenth of the way in (no
earlier than step ``REFIT_AT_MIN``), timed from step 3 on, and halfway, timed from the first
re-fit (:class:`Pacer`). Everything here is pure: times are passed in, never read.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

MARGIN = 0.05  # share of the fitted time kept back for a machine that slows down
FINISH_RESERVE_S = 25.0  # the final save, Hugging Face export and plot
REFIT_AT_MIN = 20
PACE_FROM = 3  # the pace is timed from the end of this step (the first ones warm up)
FIT_EVALS = 6  # held-out evaluations reserved by the first fit (step 0, three inner, final, spare)
MIN_FIT_STEPS = 2  # a run's first step has learning rate 0 (warmup), so one step learns nothing


@dataclass(frozen=True)
class StepBudget:
    """A wall-time budget for a whole command.

    ``eval_batch_steps``: one held-out batch's cost in training steps; ``cap``: at most this
    many steps (an explicit ``--steps``)."""

    budget_s: float
    margin: float = MARGIN
    finish_reserve_s: float = FINISH_RESERVE_S
    eval_batch_steps: float = 1.2
    cap: int | None = None

    def fit(self, times: list[float], spent_s: float, eval_batches: int) -> tuple[int, float]:
        """(steps, seconds per step) that fit the budget given timed calls ``times`` (the first
        a warm-up or compile, not counted in the pace) and ``spent_s`` already used. The pace
        is the median of the timed steps; ``FIT_EVALS`` evaluations of ``eval_batches``
        batches and the finishing reserve are kept back, and ``margin`` of what is left.
        Fewer than ``MIN_FIT_STEPS`` (even 0) means the budget is too short to train at all."""
        step_s = statistics.median(times[1:])
        left = self.budget_s - spent_s - sum(times) - self.reserved_s(step_s, eval_batches)
        steps = max(0, int(left * (1.0 - self.margin) / step_s))
        return (min(steps, self.cap) if self.cap else steps), step_s

    def reserved_s(self, step_s: float, eval_batches: int) -> float:
        """The seconds :meth:`fit` keeps back at ``step_s``: ``FIT_EVALS`` evaluations of
        ``eval_batches`` batches and the finishing reserve."""
        return FIT_EVALS * eval_batches * step_s * self.eval_batch_steps + self.finish_reserve_s

    def shortest_s(self, times: list[float], spent_s: float, eval_batches: int) -> float:
        """The least budget that :meth:`fit` gives ``MIN_FIT_STEPS`` at the same pace."""
        step_s = statistics.median(times[1:])
        return (spent_s + sum(times) + self.reserved_s(step_s, eval_batches)
                + (MIN_FIT_STEPS + 1) * step_s / (1.0 - self.margin))

    def refit(self, step: int, step_s: float, elapsed_s: float, evals_left: int,
              eval_s: float) -> int:
        """The total step count re-fitted at ``step``: the steps that fit what is left after
        ``elapsed_s`` at ``step_s``, keeping back ``evals_left`` evaluations of ``eval_s``, the
        finishing reserve and the margin; never fewer than ``step + 1``, never above ``cap``."""
        left = (self.budget_s - elapsed_s - self.finish_reserve_s - evals_left * eval_s)
        total = step + max(1, int(left * (1.0 - self.margin) / step_s))
        return min(total, self.cap) if self.cap else total


def refit_point(total_steps: int) -> int | None:
    """The step of the first re-fit, or None for a run too short to time its pace (the point
    would fall past halfway)."""
    at = max(REFIT_AT_MIN, total_steps // 10)
    return at if at <= total_steps // 2 else None


def evals_left(step: int, total_steps: int, eval_every: int) -> int:
    """Held-out evaluations still to come after ``step``: the inner ones at multiples of
    ``eval_every`` before ``total_steps``, and the final one."""
    return (total_steps - 1) // eval_every - step // eval_every + 1


@dataclass(frozen=True)
class Pacer:
    """Where a budgeted run stands in its re-fits. The loop asks :meth:`wants_clock` after
    each step; when true it syncs the device and calls :meth:`observe` with the clock, which
    returns the next pacer and the re-fitted step count (None when nothing changed).
    Time the run spends outside its steps (evaluations, saves) is passed to :meth:`pause`
    and left out of the pace."""

    budget: StepBudget
    t_start: float  # when the command started (the budget covers the whole command)
    eval_s: float  # one held-out evaluation, measured at step 0
    refit_at: int | None
    pace_from: int = PACE_FROM
    pace_t0: float | None = None
    paused_s: float = 0.0
    refits: tuple[dict, ...] = ()

    @classmethod
    def start(cls, budget: StepBudget, t_start: float, eval_s: float, total_steps: int
              ) -> "Pacer":
        return cls(budget, t_start, eval_s, refit_point(total_steps))

    def wants_clock(self, step: int) -> bool:
        return self.refit_at is not None and (
            step == self.refit_at or (step == self.pace_from and self.pace_t0 is None))

    def pause(self, seconds: float) -> "Pacer":
        return dataclasses.replace(self, paused_s=self.paused_s + seconds)

    def observe(self, step: int, now: float, total_steps: int, eval_every: int
                ) -> tuple["Pacer", int | None]:
        if step != self.refit_at:  # the start of the timed stretch
            return dataclasses.replace(self, pace_t0=now, paused_s=0.0), None
        step_s = (now - self.pace_t0 - self.paused_s) / (step - self.pace_from)
        total = self.budget.refit(step, step_s, now - self.t_start,
                                  evals_left(step, total_steps, eval_every), self.eval_s)
        refits = self.refits + ({"at": step, "s_per_step": step_s, "steps": total},)
        halfway = total // 2
        nxt = halfway if len(refits) == 1 and halfway - step >= REFIT_AT_MIN else None
        return (dataclasses.replace(self, refit_at=nxt, pace_from=step, pace_t0=now,
                                    paused_s=0.0, refits=refits), total)
