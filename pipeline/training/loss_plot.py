"""The loss curve as a PNG, written next to every checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_loss(history: list[tuple[int, float]], path: Path, title: str) -> None:
    """Raw per-step loss (light) and its running mean over 50 steps (dark)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([s for s, _ in history])
    losses = np.array([v for _, v in history])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    window = min(50, len(losses))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
