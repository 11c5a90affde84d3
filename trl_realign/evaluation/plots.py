"""The λ-sweep figure: accuracy and mean generated tokens against λ (the paper's Figure 4)."""

from __future__ import annotations

from collections.abc import Sequence


def plot_lambda_sweep(summary: Sequence[dict], path: str, title: str | None = None) -> str:
    """
    Write a PNG with two panels, accuracy and mean generated tokens against λ, one line per method, and return `path`.

    `summary` holds rows with `method`, `realign_lambda`, `accuracy` and `mean_tokens` (as returned by
    [`~trl_realign.evaluation.evaluate`]). Dotted lines mark λ=0 (reference model) and λ=1 (aligned model).
    """
    if not summary:
        raise ValueError("Nothing to plot: the summary is empty.")
    # The object-oriented API renders with Agg without pyplot, so the caller's matplotlib backend is left alone
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    accuracy_axes, tokens_axes = figure.subplots(1, 2, sharex=True)
    methods = list(dict.fromkeys(row["method"] for row in summary))
    for method in methods:
        rows = sorted((row for row in summary if row["method"] == method), key=lambda row: row["realign_lambda"])
        lambdas = [row["realign_lambda"] for row in rows]
        accuracy_axes.plot(lambdas, [100 * row["accuracy"] for row in rows], marker="o", label=method)
        tokens_axes.plot(lambdas, [row["mean_tokens"] for row in rows], marker="o", label=method)
    for axes, ylabel in ((accuracy_axes, "Accuracy (Pass@1, %)"), (tokens_axes, "Mean generated tokens")):
        for boundary in (0.0, 1.0):
            axes.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        axes.set_xlabel("λ (0: reference, 1: aligned)")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    # From zero, so that the height of a point reads as its accuracy (and an all-zero sweep still shows a scale)
    accuracy_axes.set_ylim(0, max(1.0, 110 * max(row["accuracy"] for row in summary)))
    if len(methods) > 1:
        accuracy_axes.legend()
    if title:
        figure.suptitle(title)
    figure.savefig(path, format="png", dpi=120)
    return path
