"""The wall-time budget: fitting and re-fitting a run's step count (pace in, steps out)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electra_fn.budget import (FINISH_RESERVE_S, MIN_FIT_STEPS, REFIT_AT_MIN, Pacer,
                               StepBudget, evals_left, refit_point)


def test_fit_takes_the_median_pace_and_keeps_back_evaluations_and_margin():
    # 900 s budget, 60 s spent; warm-up call 3 s, then 1.4 / 2.0 / 1.5 s: the median (1.5)
    # sets the pace, not the fastest step.
    times = [3.0, 1.4, 2.0, 1.5]
    b = StepBudget(900.0, margin=0.0)
    steps, step_s = b.fit(times, 60.0, eval_batches=8)
    assert step_s == 1.5
    reserve = FINISH_RESERVE_S + 6 * 8 * 1.5 * b.eval_batch_steps  # six evaluations of 8
    assert steps == int((900 - 60 - sum(times) - reserve) / 1.5)
    with_margin, _ = StepBudget(900.0, margin=0.05).fit(times, 60.0, eval_batches=8)
    assert with_margin == int(0.95 * (900 - 60 - sum(times) - reserve) / 1.5)
    assert StepBudget(900.0, cap=100).fit(times, 60.0, 8)[0] == 100
    # a budget already spent fits nothing (the caller refuses it)
    assert StepBudget(10.0).fit(times, 60.0, 8)[0] == 0


@given(st.lists(st.floats(0.01, 20.0), min_size=2, max_size=6), st.floats(0.0, 600.0),
       st.integers(1, 16), st.floats(0.0, 0.3))
def test_shortest_budget_is_the_least_that_fits_min_steps(times, spent, batches, margin):
    """``shortest_s`` fits ``MIN_FIT_STEPS`` (give or take one for rounding); a budget a
    step's time shorter fits fewer."""
    b = StepBudget(1.0, margin=margin)
    need = b.shortest_s(times, spent, batches)
    fitted, step_s = StepBudget(need, margin=margin).fit(times, spent, batches)
    assert fitted >= MIN_FIT_STEPS and fitted <= MIN_FIT_STEPS + 1
    shorter = StepBudget(need - 2 * step_s / (1 - margin), margin=margin)
    assert shorter.fit(times, spent, batches)[0] < MIN_FIT_STEPS


def test_refit_point_and_refit():
    assert (refit_point(829), refit_point(300), refit_point(150), refit_point(40)) == (82, 30, 20, 20)
    assert refit_point(39) is None and refit_point(5) is None
    # step 82 after 150 s of a 900 s budget at 1.05 s/step, four 6 s evaluations left
    left = (900 - 150 - FINISH_RESERVE_S - 4 * 6.0) * 0.95
    assert StepBudget(900.0).refit(82, 1.05, 150.0, 4, 6.0) == 82 + int(left / 1.05)
    assert StepBudget(900.0, margin=0.0).refit(82, 1.05, 150.0, 4, 6.0) == 82 + int(
        (900 - 150 - FINISH_RESERVE_S - 24.0) / 1.05)
    assert StepBudget(900.0, cap=500).refit(82, 1.05, 150.0, 4, 6.0) == 500
    # a budget already spent still takes one more step
    assert StepBudget(100.0).refit(82, 1.05, 150.0, 4, 6.0) == 83


def test_evals_left_counts_inner_evaluations_and_the_final_one():
    # a 400-step run evaluating every 100: at step 40, the ones at 100, 200, 300 and the end
    assert evals_left(40, 400, 100) == 4
    assert evals_left(100, 400, 100) == 3  # step 100's has happened
    assert evals_left(399, 400, 100) == 1


def _drive(pacer: Pacer, total: int, eval_every: int, step_s: float, pauses: dict):
    """Run a simulated clock through a pacer: each step takes ``step_s``; ``pauses`` adds
    evaluation time after given steps. Returns the re-fits and the final step count."""
    now = pacer.t_start + 10.0  # setup and the budget fit
    step = 0
    while step < total:
        step += 1
        now += step_s
        if pacer.wants_clock(step):
            pacer, new_total = pacer.observe(step, now, total, eval_every)
            if new_total is not None:
                total = new_total
        if step in pauses:
            now += pauses[step]
            pacer = pacer.pause(pauses[step])
    return pacer.refits, total, now


def test_pacer_refits_twice_from_its_own_pace_and_ignores_pauses():
    """Fitted for 1,000 steps but stepping at 0.5 s in a 300 s budget: the first re-fit (step
    100) brings the count down to what fits, the second (halfway) confirms it; a 20 s
    evaluation in between is left out of the pace."""
    budget = StepBudget(300.0, margin=0.0, finish_reserve_s=0.0)
    pacer = Pacer.start(budget, t_start=0.0, eval_s=0.0, total_steps=1000)
    refits, total, end = _drive(pacer, 1000, 250, 0.5, {50: 20.0})
    assert [r["at"] for r in refits] == [100, refits[0]["steps"] // 2]
    assert all(r["s_per_step"] == pytest.approx(0.5) for r in refits)
    assert total == refits[-1]["steps"]
    assert end == pytest.approx(300.0, abs=1.0)  # the run ends on its budget


@settings(max_examples=50, deadline=None)
@given(fitted=st.integers(1, 5000), step_s=st.floats(0.01, 5.0),
       budget_s=st.floats(10.0, 5000.0))
def test_pacer_never_ends_before_its_refit_step_and_never_refits_short_runs(fitted, step_s,
                                                                            budget_s):
    pacer = Pacer.start(StepBudget(budget_s), 0.0, eval_s=1.0, total_steps=fitted)
    refits, total, _ = _drive(pacer, fitted, max(1, fitted // 4), step_s, {})
    if refit_point(fitted) is None:
        assert refits == () and total == fitted
    for r in refits:
        assert r["steps"] > r["at"]
    if len(refits) == 2:
        assert refits[1]["at"] - refits[0]["at"] >= REFIT_AT_MIN
    assert total >= 1
