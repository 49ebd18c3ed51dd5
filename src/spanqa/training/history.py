"""The learning curve of a run: training and validation loss, and one task metric, against steps."""

from __future__ import annotations

from pathlib import Path


def plot_learning_curve(history: list[dict], path: Path, metric: str = "f1") -> None:
    """Training vs validation loss, and dev `metric`, against optimizer steps (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["training_loss"]) for h in history if "training_loss" in h]
    valid = [(h["step"], h["valid_loss"]) for h in history if "valid_loss" in h]
    scores = [(h["step"], h[metric]) for h in history if metric in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for points, label in ((train, "training loss"), (valid, "validation loss")):
        if points:
            ax1.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    if scores:
        ax2.plot(*zip(*scores), marker="o", color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"dev {metric.replace('_', ' ')}")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def plot_time_to_accuracy(history: list[dict], path: Path, metric: str = "f1") -> None:
    """Dev `metric` against training minutes (evaluation time excluded): the time-to-accuracy curve."""
    points = [(h["train_seconds"] / 60, h[metric]) for h in history if metric in h and "train_seconds" in h]
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*points), marker="o", color="tab:green")
    ax.set_xlabel("training minutes (evaluation excluded)")
    ax.set_ylabel(f"dev {metric.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
