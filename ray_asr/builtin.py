"""Built-in assets a config can name instead of paths, built on first use under `output_dir/assets/`.

    model.name_or_path: builtin:tiny-whisper     a tiny random Whisper (`ray_asr.tiny`)
    data.train:         builtin:tones/train      a small "tone language" corpus: each word is a
    data.eval:          builtin:tones/eval       short tone of its own pitch, so a tiny model can
                                                 learn it on a CPU in a minute

`configs/smoke.yaml` uses both: the whole product runs end to end offline in seconds per step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ray_asr.config import Config

PREFIX = "builtin:"
TINY_WHISPER = "builtin:tiny-whisper"
# Short words: the tiny model's tokenizer is byte-level, and evaluation decodes up to twice the label length.
WORDS = ("ka", "po", "mi", "tu", "le", "so", "ra", "ne")
SPLIT_SIZES = {"train": 64, "eval": 16, "general": 8}
SAMPLE_RATE = 16_000
WORD_S = 0.2  # one tone per word, then a gap of half that
PITCH_HZ = 300.0  # word k sounds at 300 * 1.25**k Hz: eight words span 300-1430 Hz


def tone_sentence(words: list[str], rng: np.random.Generator) -> np.ndarray:
    """The clip of a word sequence: one tone per word (pitch names the word), gaps, a little noise."""
    t = np.arange(int(WORD_S * SAMPLE_RATE)) / SAMPLE_RATE
    gap = np.zeros(int(WORD_S * SAMPLE_RATE / 2), np.float32)
    envelope = np.hanning(len(t))
    parts = [gap]
    for word in words:
        freq = PITCH_HZ * 1.25 ** WORDS.index(word)
        parts += [(0.3 * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32), gap]
    wave = np.concatenate(parts)
    return (wave + 0.01 * rng.standard_normal(len(wave))).astype(np.float32)


def build_tones(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Writes clips/ and train/eval/general manifests (2-5 words per clip); returns the manifests."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    manifests = {}
    for split, count in SPLIT_SIZES.items():
        path = out_dir / f"{split}.jsonl"
        lines = []
        for i in range(count):
            words = list(rng.choice(WORDS, size=int(rng.integers(2, 6))))
            clip = f"clips/{split}_{i:03d}.wav"
            sf.write(out_dir / clip, tone_sentence(words, rng), SAMPLE_RATE, subtype="PCM_16")
            lines.append(json.dumps({"audio": clip, "text": " ".join(words)}))
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)  # the manifest appears only once its clips exist
        manifests[split] = path
    return manifests


def resolve(cfg: Config) -> Config:
    """`cfg` with `builtin:` model and data names replaced by the built assets' paths."""
    assets = Path(cfg.output_dir).resolve() / "assets"
    model = cfg.model
    if model.name_or_path == TINY_WHISPER:
        folder = assets / "tiny-whisper"
        if not (folder / "model.safetensors").exists():
            from ray_asr.tiny import build_tiny_whisper

            build_tiny_whisper(folder, language=model.language, task=model.task)
        model = dataclasses.replace(model, name_or_path=str(folder))
    elif model.name_or_path.startswith(PREFIX):
        from ray_asr.config import ConfigError

        raise ConfigError(f"model.name_or_path: unknown built-in {model.name_or_path!r} (known: {TINY_WHISPER})")
    data = cfg.data
    for split in ("train", "eval", "general_eval"):
        value = getattr(data, split)
        if not (value and value.startswith(PREFIX)):
            continue
        corpus, _, name = value.removeprefix(PREFIX).partition("/")
        if corpus != "tones" or name not in SPLIT_SIZES:
            from ray_asr.config import ConfigError

            raise ConfigError(f"data.{split}: unknown built-in {value!r} (known: builtin:tones/train|eval|general)")
        folder = assets / "tones"
        if not (folder / f"{name}.jsonl").exists():
            build_tones(folder)
        data = dataclasses.replace(data, **{split: str(folder / f"{name}.jsonl")})
    return dataclasses.replace(cfg, model=model, data=data)
