"""Robustness report: WER of one evaluation set under fixed, seeded noise and echo, with and without denoising.

Every condition corrupts each clip with a generator seeded by (seed, condition, clip id), so each
model and each denoise setting hears exactly the same corrupted audio: differences between rows are
the models' and the denoiser's, not the noise draw's.

    --robustness snr=0,5,10,20 noise=white,pink,path/to/noises echo=0.3,0.8

`noise` entries are colours (white, pink, brown) or noise recordings (files or folders); each is
mixed at every `snr` (dB, measured on the actual signals). `echo` entries are reverberation times
(RT60, seconds) of a synthetic room at a fixed direct-to-reverberant ratio (`ECHO_DRR_DB`).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ray_asr.constants import SAMPLE_RATE

COLOURS = ("white", "pink", "brown")
DEFAULT_SNR_DB = (0.0, 5.0, 10.0, 20.0)  # from hard (speech as loud as the noise) to mild
ECHO_DRR_DB = 0.0  # as much reverberant as direct energy: a talker a few metres off in a bare room
DENOISE_STRENGTH = 1.0  # noisereduce removes all the noise it estimates: the setting a user would try first
KEYS = ("snr", "noise", "echo")
# `key=values` up to the next `key=` (after a space or a comma) or the end.
SETTING = re.compile(rf"({'|'.join(KEYS)})=(.*?)(?=[ ,](?:{'|'.join(KEYS)})=|\s*$)")


@dataclass(frozen=True)
class Condition:
    """One way of corrupting the set (clean: none)."""

    name: str
    noise: str | None = None
    """A colour or a recording path, with `snr_db`."""
    snr_db: float | None = None
    rt60_s: float | None = None

    def corrupt(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from augment.echo import Echo
        from augment.noise import Noise

        if self.noise is not None:
            options = {"colours": (self.noise,)} if self.noise in COLOURS else {"files": [self.noise]}
            return Noise(snr_db=self.snr_db, **options)(wave, SAMPLE_RATE, rng)
        if self.rt60_s is not None:
            return Echo(rt60_s=self.rt60_s, drr_db=ECHO_DRR_DB)(wave, SAMPLE_RATE, rng)
        return wave


CLEAN = Condition("clean")


def _floats(key: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--robustness {key}={text}: numbers separated by commas expected") from None
    if not values:
        raise ValueError(f"--robustness {key}=: no values")
    return values


def parse(spec: list[str] | str) -> list[Condition]:
    """Conditions of `--robustness` (`snr=0,5 noise=white,pink echo=0.3`, space- or comma-separated keys), clean first."""
    text = " ".join(spec) if isinstance(spec, list) else spec
    found = dict(SETTING.findall(text.strip()))
    leftover = SETTING.sub("", text).strip(" ,")
    if leftover or not found:
        raise ValueError(f"--robustness: cannot read {leftover or text!r} (expected snr=0,5,10 noise=white,pink echo=0.3)")
    conditions = [CLEAN]
    if "snr" in found or "noise" in found:
        snrs = _floats("snr", found["snr"]) if "snr" in found else list(DEFAULT_SNR_DB)
        noises = [n.strip() for n in found.get("noise", "white").split(",") if n.strip()]
        for noise in noises:
            if noise not in COLOURS and not Path(noise).exists():
                raise ValueError(f"--robustness noise={noise}: neither a colour ({', '.join(COLOURS)}) nor an existing "
                                 f"file or folder of noise recordings")
            label = noise if noise in COLOURS else Path(noise).name
            conditions += [Condition(f"{label} {snr:g} dB", noise=noise, snr_db=snr) for snr in snrs]
    if "echo" in found:
        conditions += [Condition(f"echo rt60 {rt60:g} s", rt60_s=rt60) for rt60 in _floats("echo", found["echo"])]
    return conditions


def rng(seed: int, condition: Condition, clip_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(condition.name.encode()), zlib.crc32(clip_id.encode())])


def run(models: dict[str, str], source: str, conditions: list[Condition], denoise: bool = False, seed: int = 0,
        batch_size: int = 8, language: str | None = None, beam_size: int = 1) -> list[dict]:
    """One row per model × condition × denoise setting: WER, CER and the condition's settings."""
    from augment.denoise import Denoise
    from ray_asr.evaluate import Scorer, read_clips
    from ray_asr.progress import bar

    cleaner = Denoise(strength=DENOISE_STRENGTH)
    settings = (False, True) if denoise else (False,)
    rows, clips = [], None
    with bar(total=len(models) * len(conditions) * len(settings), desc="robustness", unit="set") as progress:
        for label, folder in models.items():
            scorer = Scorer(folder, language, batch_size, beam_size=beam_size)
            if clips is None:
                clips, _ = read_clips(source, scorer.tokenizer)
                if not clips:
                    raise ValueError(f"{source}: no clip was accepted, nothing to evaluate")
            for condition in conditions:
                for cleaned in settings:
                    def transform(wave, clip, condition=condition, cleaned=cleaned):
                        noisy = condition.corrupt(wave, rng(seed, condition, clip.id))
                        return cleaner(noisy, SAMPLE_RATE, rng(seed, condition, clip.id)) if cleaned else noisy

                    report = scorer.report(clips, transform=transform)
                    rows.append({"model": label, "condition": condition.name, "denoise": cleaned,
                                 **{k: v for k, v in asdict(condition).items() if k != "name"},
                                 **{k: report[k] for k in ("wer", "cer", "num_utterances")}})
                    progress.update(1)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: one row per condition, one WER column per model and denoise setting."""
    columns = list(dict.fromkeys((r["model"], r["denoise"]) for r in rows))
    head = ["condition"] + [f"{model}{' + denoise' if cleaned else ''} WER" for model, cleaned in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        cells = {(r["model"], r["denoise"]): r["wer"] for r in rows if r["condition"] == condition}
        lines.append("| " + " | ".join([condition] + [f"{100 * cells[c]:.1f}%" for c in columns]) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out: Path) -> dict[str, Path]:
    """`out` (.json), and beside it the markdown table (.md) and the plot (.png)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    table = out.with_suffix(".md")
    table.write_text(markdown(rows), encoding="utf-8")
    from ray_asr import plots

    return {"json": out, "markdown": table, "plot": plots.robustness(rows, out.with_suffix(".png"))}
