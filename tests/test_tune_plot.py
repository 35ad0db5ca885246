"""The tuning history plot: the "best so far" step holds the best complete value through the
last trial of any state, so pruned or failed trials at the end of a study are not cut off."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from moola.sweeps._tune import _best_so_far, _history_figure, _plot_history, tuning_verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _study(direction: Literal["minimize", "maximize"],
           specs: list[tuple[TrialState, float | None]]) -> list[Any]:
    """The trials of an in-memory study, numbered 0.. in the order given."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    for state, value in specs:
        if state == TrialState.COMPLETE:
            study.add_trial(create_trial(value=value))
        elif state == TrialState.PRUNED:
            assert value is not None
            study.add_trial(create_trial(state=state, value=value, intermediate_values={0: value}))
        else:
            study.add_trial(create_trial(state=state))
    return study.trials


def _best_line(fig: Any) -> tuple[list[float], list[float]]:
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "best so far"]
    return list(line.get_xdata()), list(line.get_ydata())


def test_best_so_far_reaches_a_trailing_pruned_and_failed_trial():
    trials = _study("maximize", [(TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, 0.7),
                                 (TrialState.COMPLETE, 0.6), (TrialState.PRUNED, 0.3),
                                 (TrialState.FAIL, None), (TrialState.PRUNED, 0.9)])
    assert _best_so_far(trials, "max") == ([0, 1, 2, 5], [0.5, 0.7, 0.7, 0.7])
    fig = _history_figure(trials, "val_accuracy", "max", "s")
    try:
        xs, ys = _best_line(fig)
        assert xs[-1] == max(t.number for t in trials) == 5
        assert ys == [0.5, 0.7, 0.7, 0.7]  # a pruned trial's last value never counts as best
    finally:
        plt.close(fig)


def test_best_so_far_on_a_minimised_metric_ending_in_a_failure():
    trials = _study("minimize", [(TrialState.COMPLETE, 0.9), (TrialState.FAIL, None),
                                 (TrialState.COMPLETE, 0.4), (TrialState.COMPLETE, 0.8),
                                 (TrialState.FAIL, None)])
    fig = _history_figure(trials, "val_loss", "min", "s")
    try:
        assert _best_line(fig) == ([0, 2, 3, 4], [0.9, 0.4, 0.4, 0.4])
    finally:
        plt.close(fig)


def test_best_so_far_ends_at_the_last_complete_trial_when_it_is_the_last():
    trials = _study("maximize", [(TrialState.PRUNED, 0.2), (TrialState.COMPLETE, 0.5),
                                 (TrialState.COMPLETE, 0.6)])
    assert _best_so_far(trials, "max") == ([1, 2], [0.5, 0.6])


@pytest.mark.parametrize("states", [[TrialState.FAIL, TrialState.FAIL],
                                    [TrialState.PRUNED, TrialState.FAIL]])
def test_no_best_line_without_a_complete_trial(tmp_path: Path, states: list[TrialState]):
    trials = _study("maximize", [(s, 0.3 if s == TrialState.PRUNED else None) for s in states])
    assert _best_so_far(trials, "max") == ([], [])
    fig = _history_figure(trials, "val_accuracy", "max", "s")
    try:
        assert not [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "best so far"]
    finally:
        plt.close(fig)
    _plot_history(trials, "val_accuracy", "max", "s", tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC


def test_the_png_is_still_written(tmp_path: Path):
    trials = _study("maximize", [(TrialState.COMPLETE, 0.5), (TrialState.PRUNED, 0.3)])
    _plot_history(trials, "val_accuracy", "max", "s", tmp_path / "tuning.png")
    assert (tmp_path / "tuning.png").read_bytes()[:8] == PNG_MAGIC


def test_the_tuning_verdict_weighs_the_best_against_the_first_and_the_median_trial():
    trials = _study("minimize", [(TrialState.COMPLETE, 0.70), (TrialState.COMPLETE, 0.64),
                                 (TrialState.PRUNED, 0.9), (TrialState.COMPLETE, 0.68)])
    lines, loud = tuning_verdict(trials, "val_loss", "min")
    assert lines[0] == ("Best of 3 complete trial(s) (3 complete, 1 pruned) by validation val_loss (min): "
                        "trial 1 with 0.64, against 0.7 for the first complete trial (-0.06) and 0.68 "
                        "for the median one (-0.04).")
    assert not loud


def test_a_study_whose_first_trial_stays_best_says_tuning_gained_nothing():
    lines, loud = tuning_verdict(_study("maximize", [(TrialState.COMPLETE, 0.61), (TrialState.COMPLETE, 0.55),
                                                     (TrialState.COMPLETE, 0.61)]), "val_acc", "max")
    assert loud and "(+0)" in lines[0] and lines[1].startswith("NOTHING GAINED: no later trial beat")
    better_later = [(TrialState.COMPLETE, 0.55), (TrialState.COMPLETE, 0.61)]
    lines, loud = tuning_verdict(_study("maximize", better_later), "val_acc", "max")
    assert not loud and len(lines) == 1


def test_a_study_with_one_or_no_complete_trial_says_nothing_was_tuned():
    lines, loud = tuning_verdict(_study("minimize", [(TrialState.COMPLETE, 0.7), (TrialState.FAIL, None)]),
                                 "val_loss", "min")
    assert loud and "ONE COMPLETE TRIAL" in lines[1]
    lines, loud = tuning_verdict(_study("maximize", [(TrialState.FAIL, None)]), "val_acc", "max")
    assert loud and lines == ["NOTHING TUNED: no trial completed (1 fail); no best configuration."]
