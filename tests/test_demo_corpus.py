"""The embedded demo corpus: real synthesised speech, three splits, held-out eval templates."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from ray_asr import demo_corpus
from ray_asr.demo_corpus import CorpusSize


def test_build_writes_three_manifests_of_speech_and_the_training_parts(tmp_path):
    manifests = demo_corpus.build(tmp_path, CorpusSize(train=6, eval=3, general=2, rehearsal=2), seed=1, language="xx")
    assert set(manifests) == {"train", "eval", "general", "in_domain", "rehearsal"}
    read = {split: [json.loads(line) for line in path.read_text().splitlines()] for split, path in manifests.items()}
    for split, count in (("train", 8), ("eval", 3), ("general", 2)):
        assert len(read[split]) == count
        for row in read[split]:
            wave, rate = sf.read(tmp_path / row["audio"])
            assert rate == 22_050 and 0.8 < len(wave) / rate < 8 and np.abs(wave).max() > 0.05
            assert abs(row["duration"] - len(wave) / rate) < 1e-2 and row["text"] and row["language"] == "xx"
    # The training split's parts: every clinical row in one, every everyday row in the other, nothing else.
    assert len(read["in_domain"]) == 6 and all(any(d in r["text"] for d in demo_corpus.DRUGS) for r in read["in_domain"])
    assert len(read["rehearsal"]) == 2 and not any(d in r["text"] for r in read["rehearsal"] for d in demo_corpus.DRUGS)
    assert sorted(map(json.dumps, read["in_domain"] + read["rehearsal"])) == sorted(map(json.dumps, read["train"]))


def test_splits_are_deterministic_and_eval_templates_are_held_out():
    a = demo_corpus.sentences(CorpusSize(), seed=3)
    assert a == demo_corpus.sentences(CorpusSize(), seed=3)
    assert a != demo_corpus.sentences(CorpusSize(), seed=4)
    train_texts = {t for t, _ in a["train"]}
    assert not train_texts & {t for t, _ in a["eval"]}
    assert all(any(d in t for d in demo_corpus.DRUGS) for t, _ in a["eval"])
    assert not any(d in t for t, _ in a["general"] for d in demo_corpus.DRUGS)
    assert len({v.name for _, v in a["train"]}) >= 4  # several voices
    # Rehearsal: everyday sentences interleaved in training, never the general control's sentences.
    everyday = [t for t, _ in a["train"] if not any(d in t for d in demo_corpus.DRUGS)]
    assert len(everyday) == CorpusSize().rehearsal and not set(everyday) & {t for t, _ in a["general"]}
    assert len(a["train"]) == CorpusSize().train + CorpusSize().rehearsal
    positions = [i for i, (t, _) in enumerate(a["train"]) if t in everyday]
    assert positions[0] < 10 and positions[-1] > len(a["train"]) - 10  # spread through the split


def test_an_accent_is_scored_on_speakers_held_out_of_training():
    accent = demo_corpus.ACCENTS["french"]
    plan = demo_corpus.sentences(CorpusSize(), seed=0, accent=accent)
    heard = {v.name for _, v in plan["train"]}
    assert heard <= {v.name for v in accent.train} and len(heard) >= 4
    for split in ("eval", "general"):
        assert {v.name for _, v in plan[split]} <= {v.name for v in accent.held_out}
    assert not heard & {v.name for v in accent.held_out}
    # The same text as the demo corpus: only the speakers differ.
    demo = demo_corpus.sentences(CorpusSize(), seed=0)
    assert [[t for t, _ in plan[s]] for s in plan] == [[t for t, _ in demo[s]] for s in demo]


def test_accent_corpus_is_speech_and_an_unknown_accent_is_one_line(tmp_path, capsys):
    from ray_asr.cli import main

    manifests = demo_corpus.build(tmp_path, CorpusSize(train=2, eval=2, general=2, rehearsal=0), accent="french")
    for path in manifests.values():
        for row in map(json.loads, path.read_text().splitlines()):
            wave, rate = sf.read(tmp_path / row["audio"])
            assert row["speaker"].startswith("fr") and np.abs(wave).max() > 0.05 and len(wave) / rate > 0.8
    capsys.readouterr()  # the synthesis bars
    assert main(["demo-corpus", str(tmp_path / "x"), "--accent", "martian"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "french" in err
