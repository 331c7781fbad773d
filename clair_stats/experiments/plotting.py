"""Shared pieces of the study figures: Monte Carlo summaries and captioned PNGs.

Every study figure goes through :func:`save_figure`, which writes a caption line
under the axes (what is plotted, the grid, the number of replicates) so that a PNG
read on its own says what it shows. :func:`mc_summary` and :func:`proportion_summary`
give the Monte Carlo means and proportions with their 95% intervals that the figures
draw as bands.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "log_axis",
    "mc_summary",
    "proportion_summary",
    "save_figure",
    "wilson_interval",
]


def mc_summary(
    frame: pd.DataFrame, by: str | Sequence[str], value: str, level: float = 0.95
) -> pd.DataFrame:
    """Monte Carlo mean of ``value`` per group, with a t interval.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per replicate (and method, ...).
    by : str or sequence of str
        The grouping columns.
    value : str
        The column to summarise; NaN rows are dropped.
    level : float
        Confidence level of the interval on the mean.

    Returns
    -------
    pandas.DataFrame
        Columns ``by``, ``mean``, ``sd``, ``n``, ``se``, ``lo``, ``hi``, ``median``:
        ``lo, hi = mean -+ t_{(1+level)/2, n-1} se`` (NaN when n = 1).
    """
    from scipy import stats

    by = [by] if isinstance(by, str) else list(by)
    if value not in frame.columns:
        raise KeyError(f"column {value!r} not in the frame ({list(frame.columns)})")
    grouped = frame.dropna(subset=[value]).groupby(by, sort=True)[value]
    out = grouped.agg(["mean", "std", "count", "median"]).reset_index()
    out = out.rename(columns={"std": "sd", "count": "n"})
    out["se"] = out["sd"] / np.sqrt(out["n"])
    with np.errstate(invalid="ignore"):
        t = stats.t.ppf((1 + level) / 2, np.maximum(out["n"] - 1, 1))
    t = np.where(out["n"] > 1, t, np.nan)
    out["lo"] = out["mean"] - t * out["se"]
    out["hi"] = out["mean"] + t * out["se"]
    return out


def proportion_summary(
    frame: pd.DataFrame, by: str | Sequence[str], value: str, alpha: float = 0.05
) -> pd.DataFrame:
    """Proportion of true ``value`` per group, with a Wilson interval.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per replicate.
    by : str or sequence of str
        The grouping columns.
    value : str
        A boolean (or 0/1) column.
    alpha : float
        One minus the interval's level.

    Returns
    -------
    pandas.DataFrame
        Columns ``by``, ``successes``, ``n``, ``rate``, ``lo``, ``hi``.
    """
    by = [by] if isinstance(by, str) else list(by)
    values = frame[value]
    if not set(np.unique(values.dropna())) <= {0, 1}:
        raise ValueError(f"column {value!r} must be boolean or 0/1")
    grouped = frame.dropna(subset=[value]).groupby(by, sort=True)[value]
    out = grouped.agg(["sum", "count"]).reset_index()
    out = out.rename(columns={"sum": "successes", "count": "n"})
    out["successes"] = out["successes"].astype(int)
    out["rate"] = out["successes"] / out["n"]
    out["lo"], out["hi"] = wilson_interval(out["successes"], out["n"], alpha)
    return out


def wilson_interval(
    successes: ArrayLike, n: ArrayLike, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson interval of successes / n at level 1 - alpha, elementwise.

    Parameters
    ----------
    successes, n : array_like
        Counts (broadcast together), n >= 1.
    alpha : float
        One minus the interval's level.

    Returns
    -------
    lo, hi : numpy.ndarray
    """
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)


def log_axis(ax: object) -> None:
    """Log y-axis with plain-number tick labels at 1, 2 and 5 times powers of ten.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The axes whose y-axis is set, in place.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def save_figure(
    fig: Figure, path: str | os.PathLike[str], caption: str, width: int | None = None
) -> Path:
    """Write ``fig`` as a PNG with ``caption`` as a line of text under the axes.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure; its axes should already have labels with units and a legend.
    path : path-like
        The PNG file (its folder is created).
    caption : str
        One or two sentences: what is plotted, the grid, the replicates. Wrapped
        at ``width`` characters.
    width : int, optional
        Characters per caption line; default 15 per inch of figure width.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG; got {path.name!r}")
    if not caption.strip():
        raise ValueError("every figure needs a caption line")
    path.parent.mkdir(parents=True, exist_ok=True)
    width = width or int(15 * fig.get_figwidth())
    lines = textwrap.wrap(caption.strip(), width)
    height = fig.get_figheight()
    room = 0.16 * len(lines) + 0.1  # inches of text under the axes
    fig.set_figheight(height + room)
    fig.tight_layout(rect=(0, room / (height + room), 1, 1))
    fig.text(
        0.01, 0.01, "\n".join(lines), ha="left", va="bottom", fontsize=8, wrap=False
    )
    fig.savefig(path, dpi=130)
    return path
