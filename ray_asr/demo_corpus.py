"""The embedded demo corpus: clinical speech about medications, synthesised offline.

Whisper models trained on the open web stumble on drug names ("metoprolol" → "meta pro lol"), the
kind of domain vocabulary users fine-tune for. This module speaks sentence templates filled with
drug names in several eSpeak NG voices and speaking rates, and writes three JSONL manifests:

- `train.jsonl`: in-domain sentences (training templates), with everyday sentences mixed in (rehearsal),
- `eval.jsonl`: in-domain sentences from held-out templates and drug pairings,
- `general.jsonl`: everyday sentences, the out-of-domain control for forgetting.

Clips are FLAC at eSpeak's native 22.05 kHz, so the pipeline's resampling is exercised too.

With an accent (`ray-asr demo-corpus OUT --accent french`) the same text is spoken by that accent's
voices: the training split (rehearsal included) by its training speakers, and `eval.jsonl` and
`general.jsonl` by speakers held out of training, so a fine-tune is scored on voices it never heard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ray_asr import progress
from ray_asr.tts import EspeakSynth, Voice

DRUGS = (
    "metoprolol", "lisinopril", "atorvastatin", "amlodipine", "metformin", "levothyroxine", "omeprazole",
    "pantoprazole", "losartan", "hydrochlorothiazide", "furosemide", "spironolactone", "warfarin", "apixaban",
    "rivaroxaban", "clopidogrel", "gabapentin", "pregabalin", "sertraline", "escitalopram", "bupropion",
    "trazodone", "quetiapine", "aripiprazole", "levetiracetam", "lamotrigine", "ondansetron", "metoclopramide",
    "amoxicillin", "azithromycin", "ceftriaxone", "vancomycin", "doxycycline", "prednisone", "dexamethasone",
    "enoxaparin", "tamsulosin", "allopurinol", "colchicine", "montelukast", "tiotropium", "budesonide",
)

TRAIN_TEMPLATES = (
    "The patient was started on {a} this morning.",
    "Please discontinue {a} and begin {b}.",
    "Hold the {a} until the lab results come back.",
    "He reports nausea after the first dose of {a}.",
    "Continue {a} and add {b} at bedtime.",
    "We switched her from {a} to {b} last week.",
    "Her home medications include {a} and {b}.",
    "Check kidney function before giving {a}.",
    "An allergy to {a} is documented in the chart.",
    "Increase the {a} if the symptoms persist.",
    "The pharmacy is out of {a}, so use {b} instead.",
    "Give {a} with food to avoid stomach upset.",
)
EVAL_TEMPLATES = (
    "The nurse gave {a} an hour ago.",
    "Do not combine {a} with {b}.",
    "She stopped taking {a} because of the side effects.",
    "Restart {a} tomorrow after the procedure.",
)
GENERAL_SENTENCES = (
    "The weather was warm and sunny all weekend.",
    "Please close the window before you leave the house.",
    "My brother bought a new bicycle yesterday.",
    "We walked along the river until the sun went down.",
    "The train to the city leaves every morning.",
    "She put the keys on the kitchen table.",
    "The children played in the garden after school.",
    "I would like a cup of coffee with milk.",
    "The library closes early on Sundays.",
    "He forgot his umbrella at the office.",
    "The meeting has been moved to next week.",
    "Our neighbors have a small brown dog.",
    "The shop on the corner sells fresh bread.",
    "They painted the front door bright green.",
    "Can you tell me the way to the station?",
    "The football match was cancelled because of the rain.",
    "She reads a book every night before bed.",
    "The old bridge was repaired last summer.",
    "We need more paper for the printer.",
    "The music was too loud at the party.",
    "He works at a bank in the center of town.",
    "The flowers in the park are beautiful this spring.",
    "I left my phone in the car.",
    "The restaurant was full on Friday evening.",
    "Please remember to water the plants.",
    "The teacher wrote the answer on the board.",
    "We are going to visit our grandparents next month.",
    "The film starts at eight o'clock.",
    "My sister is learning to play the piano.",
    "The road was closed for most of the day.",
    "He cooked dinner for the whole family.",
    "The airport was busy during the holidays.",
    "The cat is sleeping on the sofa.",
    "They moved to a bigger house last year.",
    "The store opens at nine in the morning.",
    "We watched the birds from the window.",
    "The water in the lake was very cold.",
    "She sent a letter to her friend in another country.",
    "The price of the tickets went up again.",
    "He fixed the broken chair with some glue.",
)
# Everyday sentences mixed into the training split (rehearsal), none of them in the general control:
# fine-tuning on domain templates alone teaches the decoder that every sentence is clinical, and
# general WER rises; a share of ordinary speech in training keeps what the model already knew.
REHEARSAL_SENTENCES = (
    "The bus was late because of the snow.",
    "Could you pass me the salt and pepper?",
    "We are planning a trip to the mountains in July.",
    "The fishermen came back with an empty boat.",
    "My uncle grows tomatoes behind his garage.",
    "Turn left at the second traffic light.",
    "The movie started later than we expected.",
    "He painted the fence white last summer.",
    "Somebody left a red scarf on the bench.",
    "The garden needs water after such a dry week.",
    "They watched the football game at a friend's house.",
    "The new bridge will open in the spring.",
    "Remember to lock the back door tonight.",
    "She writes a letter to her grandmother every month.",
    "The kitchen smells of fresh apple pie.",
    "We ran out of milk this morning.",
    "The museum is free on the first Sunday of the month.",
    "His flight was delayed by two hours.",
    "The clock in the hall stopped at midnight.",
    "Please turn down the music a little.",
    "The lake froze over during the cold night.",
    "I need to buy a birthday present for my friend.",
    "The road along the coast is closed for repairs.",
    "She found an old photograph in the attic.",
    "Our team won the match in the last minute.",
    "A parade will march down Main Street on Saturday.",
    "He always reads the newspaper with his breakfast.",
    "The wind blew the leaves across the yard.",
    "We should leave early to avoid the traffic.",
    "The teacher asked the students to open their books.",
    "There is a small cafe next to the station.",
    "The lights went out during the storm.",
    "I am looking forward to the holidays.",
    "The farmer sold apples at the market.",
    "She lost her gloves on the way home.",
    "The concert tickets sold out in an hour.",
    "He carried the heavy boxes up the stairs.",
    "The baby laughed at the funny noise.",
    "We painted the bedroom a light shade of blue.",
    "The post office is across from the bank.",
)
VOICES = (
    Voice("en-us", 150, 50), Voice("en-us+m3", 165, 45), Voice("en-us+f2", 145, 60), Voice("en-gb-x-rp", 155, 50),
    Voice("en-us+m7", 175, 40), Voice("en-gb-x-rp+f3", 140, 55),
)


@dataclass(frozen=True)
class Accent:
    """Speakers of one accent: those a fine-tune trains on and those held out for its evaluation."""

    train: tuple[Voice, ...]
    """Voices of the training split."""
    held_out: tuple[Voice, ...]
    """Voices of the eval and general splits, none of them in `train`."""


# English text read with French letter-to-sound rules and French prosody: a strong second-language accent
# (whisper-base: 50% WER on the general sentences, 15% in the demo's own voices). eSpeak's variants
# (+m1, +f3, ...) change the formants and pitch: different speakers with the same accent.
ACCENTS = {
    "french": Accent(
        train=(Voice("fr+m1", 150, 45), Voice("fr+f1", 145, 60), Voice("fr+m3", 165, 50), Voice("fr+f3", 140, 55),
               Voice("fr+m6", 170, 40), Voice("fr", 155, 50)),
        held_out=(Voice("fr+m2", 160, 45), Voice("fr+f5", 150, 60), Voice("fr+m7", 170, 40), Voice("fr+f4", 145, 55)),
    ),
}


@dataclass(frozen=True)
class CorpusSize:
    """How many clips each split gets."""

    train: int = 320
    """In-domain training clips."""
    eval: int = 64
    """In-domain evaluation clips (held-out templates)."""
    general: int = 40
    """Out-of-domain control clips (one per general sentence)."""
    rehearsal: int = 80
    """Everyday clips mixed into the training split (rehearsal against forgetting); 0 for none."""


def _fill(template: str, rng: np.random.Generator) -> str:
    a, b = rng.choice(len(DRUGS), size=2, replace=False)
    return template.format(a=DRUGS[a], b=DRUGS[b])


def sentences(size: CorpusSize, seed: int = 0, accent: Accent | None = None) -> dict[str, list[tuple[str, Voice]]]:
    """The corpus text and speaker of every clip, per split (deterministic for a seed); with `accent`, its
    training voices speak the training split and its held-out voices the others."""
    rng = np.random.default_rng(seed)
    heard, unheard = (accent.train, accent.held_out) if accent else (VOICES, VOICES)
    split_plan = {}
    for split, templates, count, voices in (("train", TRAIN_TEMPLATES, size.train, heard),
                                            ("eval", EVAL_TEMPLATES, size.eval, unheard)):
        split_plan[split] = [(_fill(templates[i % len(templates)], rng), voices[rng.integers(len(voices))])
                             for i in range(count)]
    general = GENERAL_SENTENCES[: size.general]
    split_plan["general"] = [(text, unheard[i % len(unheard)]) for i, text in enumerate(general)]
    # Rehearsal clips interleaved through the training split (local shuffling only mixes nearby rows).
    rehearsal = [(REHEARSAL_SENTENCES[i % len(REHEARSAL_SENTENCES)], heard[(i + i // len(REHEARSAL_SENTENCES)) % len(heard)])
                 for i in range(size.rehearsal)]
    if rehearsal:
        train, every = split_plan["train"], max(1, len(split_plan["train"]) // len(rehearsal))
        mixed = []
        for i, item in enumerate(train):
            mixed.append(item)
            if (i + 1) % every == 0 and rehearsal:
                mixed.append(rehearsal.pop(0))
        split_plan["train"] = mixed + rehearsal
    return split_plan


def build(out_dir: str | Path, size: CorpusSize = CorpusSize(), seed: int = 0, accent: str | None = None,
          language: str | None = None) -> dict[str, Path]:
    """Synthesises the corpus into `out_dir` (clips/ + one manifest per split), in one of `ACCENTS` if named, every
    row tagged with `language` if given (e.g. a code for `model.new_language`); returns the manifests. The training
    split's two parts are written apart too, over the same clips: `in_domain` (clinical sentences only: few-shot
    picks) and `rehearsal` (the everyday sentences, for `data.rehearsal`)."""
    if accent is not None and accent not in ACCENTS:
        raise ValueError(f"--accent {accent!r}: expected one of {', '.join(ACCENTS)}")
    out_dir = Path(out_dir)
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    synth = EspeakSynth()
    manifests = {}
    for split, items in sentences(size, seed, ACCENTS[accent] if accent else None).items():
        path = out_dir / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as manifest, progress.bar(len(items), f"demo corpus: {split}", "clip") as bar:
            for i, (text, voice) in enumerate(items):
                wave = synth.say(text, voice)
                clip = f"clips/{split}_{i:04d}.flac"
                sf.write(out_dir / clip, wave, synth.sample_rate, subtype="PCM_16")
                row = {"audio": clip, "text": text, "speaker": voice.name, "duration": round(len(wave) / synth.sample_rate, 3)}
                if language:
                    row["language"] = language
                manifest.write(json.dumps(row) + "\n")
                bar.update(1)
        manifests[split] = path
    manifests.update(_train_parts(out_dir, manifests["train"]))
    return manifests


def _train_parts(out_dir: Path, train: Path) -> dict[str, Path]:
    """`in_domain.jsonl` and `rehearsal.jsonl`: the training manifest's rows split by kind, over the same clips."""
    everyday = set(REHEARSAL_SENTENCES)
    rows = [json.loads(line) for line in train.read_text().splitlines() if line.strip()]
    parts = {"in_domain": [r for r in rows if r["text"] not in everyday], "rehearsal": [r for r in rows if r["text"] in everyday]}
    for name, picked in parts.items():
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in picked))
    return {name: out_dir / f"{name}.jsonl" for name in parts}
