"""The evaluation report's figures, drawn with Matplotlib's object API onto PNG files.

`matplotlib.figure.Figure` needs no GUI backend and keeps no global state, so figures can be drawn
in a worker, a test or a headless server alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from triage.catalogue import BY_SLUG

DPI = 120


def _name(slug: str) -> str:
    return BY_SLUG[slug].display_name if slug in BY_SLUG else slug


def confusion_matrix_png(matrix: np.ndarray, labels: list[str], path: Path) -> Path:
    """Counts in the cells; colour by share of the true class, so a small class's misses show too."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = 2.5 + 0.75 * len(labels)
    fig = Figure(figsize=(side + 1.5, side), dpi=DPI)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = [_name(label) for label in labels]
    ax.set_xticks(range(len(labels)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    return path


def training_curves_png(log: list[dict], best_epoch: int | None, path: Path) -> Path:
    epochs = [row["epoch"] for row in log]
    fig = Figure(figsize=(11, 3.8), dpi=DPI)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    for ax, key, title in ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy")):
        ax.plot(epochs, [row[key] for row in log], "o-", label="train")
        ax.plot(epochs, [row[f"val_{key}"] for row in log], "s-", label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"exported (epoch {best_epoch})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    lr_ax.semilogy(epochs, [row["learning_rate"] for row in log], "o-", color="tab:green")
    lr_ax.set_title("Learning rate")
    lr_ax.set_xlabel("epoch")
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    return path


def reliability_png(curves: dict[str, list[dict]], path: Path) -> Path:
    """One reliability diagram per entry (e.g. before and after temperature scaling): bars at the
    accuracy of each confidence bin against the diagonal of perfect calibration, with bin counts."""
    fig = Figure(figsize=(5.2 * len(curves), 4.8), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(curves)))
    for ax, (title, bins) in zip(axes, curves.items()):
        filled = [b for b in bins if b["count"]]
        centres = [(b["low"] + b["high"]) / 2 for b in filled]
        width = bins[0]["high"] - bins[0]["low"]
        ax.bar(centres, [b["accuracy"] for b in filled], width=width * 0.9, color="tab:blue", alpha=0.8,
               label="accuracy in bin")
        # The gap from each bar's top to the bin's mean confidence: what calibration should close.
        ax.bar(centres, [b["confidence"] - b["accuracy"] for b in filled], bottom=[b["accuracy"] for b in filled],
               width=width * 0.9, color="tab:red", alpha=0.3, hatch="//", edgecolor="tab:red",
               label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        for centre, b in zip(centres, filled):
            ax.text(centre, 0.02, str(b["count"]), ha="center", fontsize=6, rotation=90, color="white")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence of the top class")
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return path
