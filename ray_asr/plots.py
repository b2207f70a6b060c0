"""PNG plots users look at: training curves of a run, WER against learning rate of a search."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict], out: Path) -> Path:
    """Train/eval loss and eval/general WER against optimizer steps, one PNG with two panels."""
    plt = _pyplot()
    steps = [row["step"] for row in history]
    fig, (loss_ax, wer_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train loss"), ("eval_loss", "eval loss"), ("general_eval_loss", "general loss")):
        if any(key in row for row in history):
            loss_ax.plot(steps, [row.get(key, float("nan")) for row in history], marker="o", label=label)
    for key, label in (("wer", "eval WER"), ("general_wer", "general WER")):
        if any(key in row for row in history):
            wer_ax.plot(steps, [100 * row.get(key, float("nan")) for row in history], marker="o", label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    wer_ax.set(xlabel="step", ylabel="WER %", title="word error rate")
    for ax in (loss_ax, wer_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
