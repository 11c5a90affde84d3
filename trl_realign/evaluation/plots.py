"""The λ-sweep figure: accuracy, truncation rate and mean generated tokens against λ (the paper's Figure 4)."""

from __future__ import annotations

from collections.abc import Sequence


_PANELS = (
    ("accuracy", "Accuracy (Pass@1, %)", 100),
    ("truncation_rate", "Truncated (no EOS, %)", 100),
    ("mean_tokens", "Mean generated tokens", 1),
)


def lambda_sweep_figure(summary: Sequence[dict], title: str | None = None):
    """
    A matplotlib `Figure` with three panels against λ: accuracy, truncation rate and mean generated tokens, one line
    per method.

    `summary` holds rows with `method`, `realign_lambda`, `accuracy`, `truncation_rate` and `mean_tokens` (as
    returned by [`~trl_realign.evaluation.evaluate`]). Dotted lines mark λ=0 (reference model) and λ=1 (aligned model).
    """
    if not summary:
        raise ValueError("Nothing to plot: the summary is empty.")
    needed = {"method", "realign_lambda", *(key for key, _, _ in _PANELS)}
    missing = sorted(needed - set(summary[0]))
    if missing:
        raise ValueError(f"The summary rows lack {missing}; pass the rows `evaluate()` or `summarize()` return.")
    # The object-oriented API renders with Agg without pyplot, so the caller's matplotlib backend is left alone
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 4), layout="constrained")
    panels = figure.subplots(1, len(_PANELS), sharex=True)
    methods = list(dict.fromkeys(row["method"] for row in summary))
    for method in methods:
        rows = sorted((row for row in summary if row["method"] == method), key=lambda row: row["realign_lambda"])
        lambdas = [row["realign_lambda"] for row in rows]
        for axes, (key, _, scale) in zip(panels, _PANELS):
            # unclipped, so that markers at 0 % and 100 % show whole on the fixed percent scale
            axes.plot(lambdas, [scale * row[key] for row in rows], marker="o", label=method, clip_on=scale != 100)
    for axes, (_, ylabel, _) in zip(panels, _PANELS):
        for boundary in (0.0, 1.0):
            axes.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        axes.set_xlabel("λ (0: reference, 1: aligned)")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    # Rates on one fixed 0-100 % scale, so that a point's height reads as its value in every panel and every run (a
    # scale fitted to the data showed a sweep that never truncates on 0 to 1, as if the rate were a fraction)
    for axes, (_, _, scale) in zip(panels, _PANELS):
        if scale == 100:
            axes.set_ylim(0, 100)
    if len(methods) > 1:
        panels[0].legend()
    if title:
        figure.suptitle(title)
    return figure


def plot_lambda_sweep(summary: Sequence[dict], path: str, title: str | None = None) -> str:
    """Write [`lambda_sweep_figure`] as a PNG to `path` and return `path`."""
    lambda_sweep_figure(summary, title).savefig(path, format="png", dpi=120)
    return path
