"""Optuna's parameter-importance and parallel-coordinate plots of a study, as HTML (plotly) and PNG (matplotlib).

The HTML files embed plotly.js (about 4.7 MB each), so they open in the MLflow UI's artifact view,
which shows HTML from a blob without network access; the PNGs are drawn with matplotlib, which
bertflow already needs, not with plotly's image export (that needs kaleido and a browser).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)
PLOTS = ("parallel_coordinate", "param_importances")
TARGET = "eval_metric"  # the validation metric the study maximises, named as in the trials' MLflow runs


def write_plots(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """``<plot>.html`` and ``<plot>.png`` for each plot that the study's complete trials allow.

    Parallel coordinates need one complete trial; importances need two with different values.
    A plot that cannot be drawn is skipped with a warning: plots never fail a sweep.
    """
    import optuna.visualization as html_plots
    import optuna.visualization.matplotlib as png_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    written: list[Path] = []
    for name in PLOTS:
        written += _both(name, lambda: getattr(html_plots, f"plot_{name}")(study, target_name=TARGET),
                         lambda: getattr(png_plots, f"plot_{name}")(study, target_name=TARGET), out)
    return written


def _both(name: str, html: Callable, png: Callable, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [out / f"{name}.html", out / f"{name}.png"]
    try:
        with warnings.catch_warnings(), plt.rc_context():  # Optuna's plots switch pyplot's style: keep it theirs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # few trials: flat axes, equal importances
            html().write_html(str(paths[0]), include_plotlyjs=True, full_html=True)
            ax = png()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            try:
                fig.set_size_inches(max(8.0, fig.get_figwidth()), max(5.0, fig.get_figheight()))
                fig.savefig(str(paths[1]), format="png", dpi=100, bbox_inches="tight")
            finally:
                plt.close(fig)
    except Exception as exc:  # noqa: BLE001 - e.g. too few distinct trials for importances
        log.warning("sweep plot %s skipped: %s", name, exc)
        for p in paths:
            p.unlink(missing_ok=True)
        return []
    return paths
