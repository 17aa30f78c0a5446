"""Evaluation plots written as PNG files (matplotlib's Agg backend, chosen when plotting)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(y: np.ndarray, scores: Mapping[str, np.ndarray], path: Path, title: str) -> Path:
    """ROC curves of the model and its baselines on the test period."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_calibration(
    y: np.ndarray, scores: Mapping[str, np.ndarray], path: Path, title: str, bins: int = 10
) -> Path:
    """Reliability diagram: observed rate per bin of predicted probability."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, bins + 1)
    for name, p in scores.items():
        idx = np.minimum(np.digitize(p, edges[1:-1]), bins - 1)
        xs, ys = [], []
        for b in range(bins):
            m = idx == b
            if m.sum() >= 10:
                xs.append(p[m].mean())
                ys.append(y[m].mean())
        ax.plot(xs, ys, "o-", label=name, ms=3)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_gains(y: np.ndarray, scores: Mapping[str, np.ndarray], path: Path, title: str) -> Path:
    """Cumulative gains: share of positives captured by targeting the top fraction."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    total = max(float(np.sum(y)), 1.0)
    for name, p in scores.items():
        order = np.argsort(-p, kind="stable")
        captured = np.cumsum(y[order]) / total
        frac = np.arange(1, len(y) + 1) / len(y)
        ax.plot(frac, captured, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="share of customers targeted", ylabel="share of positives", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_importance(importance: pd.Series, path: Path, title: str, top: int = 25) -> Path:
    """Horizontal bars of the largest total-gain importances."""
    plt = _pyplot()
    head = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(head) + 1))
    ax.barh(list(head.index), head.to_numpy(), label="total split gain of the feature")
    ax.set(xlabel="total gain", title=title)
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_confusion(
    y: np.ndarray, predicted: np.ndarray, classes: Sequence[str], path: Path, title: str
) -> Path:
    """Row-normalised confusion matrix of the next-step model (true rows, predicted columns)."""
    plt = _pyplot()
    k = len(classes)
    matrix = np.zeros((k, k))
    np.add.at(matrix, (y, predicted), 1)
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.5 * k + 2, 0.5 * k + 2))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.04).set_label("share of the observed row", fontsize=7)
    ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="observed", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_qini(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Uplift (Qini-style) curves per action, with the random-targeting lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (frac, gains) in curves.items():
        line = ax.plot(np.r_[0, frac], np.r_[0, gains], label=name)[0]
        ax.plot([0, 1], [0, gains[-1]], ":", color=line.get_color(), lw=1)
    ax.set(xlabel="share of customers targeted", ylabel="incremental outcomes per customer")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
