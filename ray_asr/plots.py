"""PNG plots users look at: training curves of a run, WER against learning rate of a search, WER under noise."""

from __future__ import annotations

from pathlib import Path

from ray_asr import metrics


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
    losses = [("train_loss", "train loss")] + [(metrics.key(split, "eval_loss"), f"{split} loss") for split in metrics.EVAL_SPLITS]
    for key, label in losses:
        if any(key in row for row in history):
            loss_ax.plot(steps, [row.get(key, float("nan")) for row in history], marker="o", label=label)
    for key, label in ((metrics.key(split, "wer"), f"{split} WER") for split in metrics.EVAL_SPLITS):
        if any(key in row for row in history):
            wer_ax.plot(steps, [100 * row.get(key, float("nan")) for row in history], marker="o", label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    wer_ax.set(xlabel="step", ylabel="WER %", title="word error rate")
    for ax in (loss_ax, wer_ax):
        ax.grid(alpha=0.3)
        if ax.lines:  # a run without evaluation splits has no WER curve: an empty panel, not a legend warning
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def search(rows: list[dict], out: Path) -> Path:
    """Final eval WER against learning rate (log axis), one colour per frozen depth; x marks early stops."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    depths = sorted({row.get("train.frozen_encoder_layers") for row in rows}, key=lambda d: (d is None, d))
    colours = plt.get_cmap("viridis")
    for i, depth in enumerate(depths):
        colour = colours(i / max(len(depths) - 1, 1))
        for early in (False, True):
            picked = [r for r in rows if r.get("train.frozen_encoder_layers") == depth and r["stopped_early"] == early]
            if picked:
                ax.scatter([r["train.learning_rate"] for r in picked], [100 * r["wer"] for r in picked], color=colour,
                           marker="x" if early else "o", s=50,
                           label=f"depth {depth}" + (" (stopped early)" if early else ""))
    ax.set_xscale("log")
    return _finish(plt, fig, ax, out, xlabel="learning rate", ylabel="eval WER % (last evaluation)", title="search")


def _finish(plt, fig, ax, out: Path, **labels) -> Path:
    """One-panel figures: labels, grid and legend on `ax`, then written to `out` and closed."""
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def fewshot_curve(rows: list[dict], base: dict, out: Path) -> Path:
    """In-domain and general WER against training-set size k (log axis), the base model's as dashed lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["k"] for r in rows]
    for key, label, colour in (("wer", "in-domain WER", "C0"), ("general_wer", "general WER", "C1")):
        values = [100 * r[key] if r[key] is not None else float("nan") for r in rows]
        ax.plot(ks, values, marker="o", color=colour, label=label)
        base_value = base.get(metrics.key("general_eval", "wer") if key == "general_wer" else "wer")
        if base_value is not None:
            ax.axhline(100 * base_value, color=colour, linestyle="--", alpha=0.6, label=f"base {label}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    return _finish(plt, fig, ax, out, xlabel="training utterances k", ylabel="WER %", title="few-shot learning curve")


def robustness(rows: list[dict], out: Path) -> Path:
    """WER against SNR, one panel per noise (and one against RT60 for echo); a line per model, dashed with denoise."""
    plt = _pyplot()
    noises = list(dict.fromkeys(r["noise"] for r in rows if r["noise"] is not None))
    panels = [("noise", n) for n in noises] + ([("echo", None)] if any(r["rt60_s"] is not None for r in rows) else [])
    panels = panels or [("clean", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    lines = list(dict.fromkeys((r["model"], r["denoise"]) for r in rows))
    colours = {model: f"C{i}" for i, model in enumerate(dict.fromkeys(m for m, _ in lines))}
    for ax, (kind, noise) in zip(axes[0], panels, strict=True):
        for model, cleaned in lines:
            mine = [r for r in rows if r["model"] == model and r["denoise"] == cleaned]
            if kind == "noise":
                points = sorted((r["snr_db"], r["wer"]) for r in mine if r["noise"] == noise)
                ax.set(xlabel="SNR (dB)", title=f"{Path(noise).name} noise")
            else:
                points = sorted((r["rt60_s"], r["wer"]) for r in mine if r["rt60_s"] is not None)
                ax.set(xlabel="RT60 (s)", title="echo")
            clean = next((r["wer"] for r in mine if r["condition"] == "clean"), None)
            label = model + (" + denoise" if cleaned else "")
            if points:
                ax.plot([x for x, _ in points], [100 * y for _, y in points], marker="o", color=colours[model],
                        linestyle="--" if cleaned else "-", label=label)
            if clean is not None:
                ax.axhline(100 * clean, color=colours[model], linestyle=":" if cleaned else "-.", alpha=0.5,
                           linewidth=1)
        ax.set(ylabel="WER %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("WER under noise and echo (horizontal lines: clean)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
