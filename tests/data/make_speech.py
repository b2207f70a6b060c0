"""Regenerates tests/data/speech: the first 12 everyday sentences of the demo corpus, one eSpeak NG voice.

    python tests/data/make_speech.py
"""

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ray_asr.demo_corpus import GENERAL_SENTENCES
from ray_asr.tts import EspeakSynth, Voice

out = Path(__file__).parent / "speech"
out.mkdir(exist_ok=True)
synth, voice = EspeakSynth(), Voice("en-us+m3", 140, 45)
with open(out / "manifest.jsonl", "w") as manifest:
    for i, text in enumerate(GENERAL_SENTENCES[:12]):
        wave = soxr.resample(synth.say(text, voice).astype(np.float32) / 32768, synth.sample_rate, 16_000)
        sf.write(out / f"{i:02d}.flac", wave, 16_000, subtype="PCM_16")
        manifest.write(json.dumps({"audio": f"{i:02d}.flac", "text": text, "speaker": voice.name}) + "\n")
