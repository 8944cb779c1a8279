"""The report's landscape and history plots: each trial's 95% CI as an error bar, the baseline
and the best trial marked (with a legend) in every panel."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import optuna
from matplotlib.container import ErrorbarContainer
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpo_infer.measurement.timing import spread
from hpo_infer.reporting.report import history_figure, landscape_figure, plot_history, plot_landscape
from hpo_infer.study.trials import BASELINE, ROLE

DISTS = {"x": IntDistribution(1, 64), "mode": CategoricalDistribution(["a", "b"])}


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for x, mode, repeats, role in [
        (1, "a", [100.0, 104.0, 98.0], BASELINE),
        (8, "b", [150.0, 160.0, 155.0], None),
        (32, "a", [210.0, 190.0, 200.0], None),
        (64, "b", [120.0, 121.0, 119.0], None),
    ]:
        sp = spread(repeats)
        attrs = {"status": "ok", "repeats": repeats, "spread": sp}
        if role:
            attrs[ROLE] = role
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                params={"x": x, "mode": mode},
                distributions=DISTS,
                value=sp["mean"],
                user_attrs=attrs,
            )
        )
    # An infeasible trial: no value to put a bar on.
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            params={"x": 16, "mode": "a"},
            distributions=DISTS,
            value=0.0,
            user_attrs={"status": "infeasible"},
        )
    )
    return study


def _bars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _check_panel(ax, study: optuna.Study, at: dict[int, float]) -> None:
    """One error bar container with a bar per measured trial spanning its CI; baseline and best marked."""
    (bars,) = _bars(ax)
    _, _, (lines,) = bars.lines
    segments = lines.get_segments()
    assert len(segments) == 4
    want = sorted(
        (t.user_attrs["spread"]["ci95_low"], t.user_attrs["spread"]["ci95_high"])
        for t in study.trials
        if "spread" in t.user_attrs
    )
    got = sorted((min(s[:, 1]), max(s[:, 1])) for s in segments)
    for (lo, hi), (glo, ghi) in zip(want, got):
        assert abs(lo - glo) < 1e-9 and abs(hi - ghi) < 1e-9
    legend = ax.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert "baseline" in labels and "best" in labels, labels
    marked = {}
    for coll in ax.collections:
        if coll.get_label() in ("baseline", "best"):
            (pt,) = coll.get_offsets()
            marked[coll.get_label()] = tuple(pt)
    assert marked == {"baseline": (at[0], study.trials[0].value), "best": (at[2], study.trials[2].value)}


def test_landscape_has_ci_bars_and_marks_baseline_and_best_in_every_panel(tmp_path: Path) -> None:
    study = _study()
    fig = landscape_figure(study)
    panels = {ax.get_xlabel(): ax for ax in fig.axes}
    assert set(panels) == {"x", "mode"}
    _check_panel(panels["x"], study, {0: 1, 2: 32})
    _check_panel(panels["mode"], study, {0: 0, 2: 0})  # categorical: "a" is at 0
    assert plot_landscape(study, tmp_path / "landscape.png") == tmp_path / "landscape.png"
    assert (tmp_path / "landscape.png").stat().st_size > 0
    plt.close(fig)


def test_history_has_ci_bars_and_marks_baseline_and_best(tmp_path: Path) -> None:
    study = _study()
    fig = history_figure(study)
    (ax,) = fig.axes
    _check_panel(ax, study, {0: 0, 2: 2})
    assert plot_history(study, tmp_path / "history.png") == tmp_path / "history.png"
    plt.close(fig)


def test_trials_measured_before_spread_was_kept_plot_without_bars() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            params={"x": 4},
            distributions={"x": DISTS["x"]},
            value=10.0,
            user_attrs={"status": "ok"},
        )
    )
    for fig in (landscape_figure(study), history_figure(study)):
        (ax,) = fig.axes
        assert _bars(ax) == []
        plt.close(fig)
