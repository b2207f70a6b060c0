"""The Ray Data pipeline on a real local Ray: quarantine, the rejected-share limit, every input format."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from audio_fixtures import write_clip

from ray_asr import audio, config, data
from ray_asr.validate import validate_source

pytestmark = pytest.mark.usefixtures("ray_local")


def _rows(ds) -> list[dict]:
    return [row for batch in ds.iter_batches(batch_size=64, batch_format="pyarrow") for row in batch.to_pylist()]


def test_catalogue_through_the_pipeline(catalogue, tiny_model, tmp_path):
    cfg = config.from_dict({"model": {"name_or_path": str(tiny_model)}, "data": {"train": str(catalogue.manifest)},
                            "output_dir": str(tmp_path)})
    sink = data.open_sink(cfg.quarantine_path)
    ds = data.build_dataset(cfg, "train", sink, enforce_limit=False)
    rows = _rows(ds)
    ray.get(sink.close.remote())
    assert {r["id"] for r in rows} == catalogue.good
    assert "ReadManifest->MapBatches(Preparer)" in ds.stats()  # reads run in the decode actors: no read tasks
    for row in rows:
        wave = audio.from_wire(row["audio"], "int16")
        assert len(wave) == row["num_samples"] and row["labels"][-1] == 256  # tiny tokenizer's end-of-text
    quarantined = [json.loads(line) for line in cfg.quarantine_path.read_text().splitlines()]
    assert {q["id"]: q["reason"] for q in quarantined} == catalogue.bad
    assert all(q["source"] == str(catalogue.manifest) and q["detail"] and q["split"] == "train" for q in quarantined)


def test_rejected_share_over_the_limit_fails_the_stream_clearly(catalogue, tiny_model, tmp_path):
    # A stream that fails in this process leaves its decode actors alive, each holding its CPUs, until its
    # executor is collected; the next tests then waited for CPUs (once past their time). One actor at a
    # quarter CPU leaves them the rest.
    cfg = config.from_dict({"model": {"name_or_path": str(tiny_model)}, "output_dir": str(tmp_path),
                            "data": {"train": str(catalogue.manifest), "prepare_concurrency": 1,
                                     "prepare_num_cpus": 0.25}})
    sink = data.open_sink(cfg.quarantine_path)
    with pytest.raises(Exception, match=r"data.train: \d+ of \d+ rows rejected, over data.max_rejected_fraction=0.01"):
        _rows(data.build_dataset(cfg, "train", sink))


def test_under_the_limit_passes(tmp_path, tiny_model):
    clip = write_clip(tmp_path / "a.wav")
    lines = [json.dumps({"audio": clip.name, "text": f"clip {i}"}) for i in range(20)] + ["{broken"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config.from_dict({"model": {"name_or_path": str(tiny_model)}, "output_dir": str(tmp_path),
                            "data": {"train": str(tmp_path / "m.jsonl"), "max_rejected_fraction": 0.1}})
    sink = data.open_sink(cfg.quarantine_path)
    assert len(_rows(data.build_dataset(cfg, "train", sink))) == 20
    assert ray.get(sink.summary.remote("train"))["reasons"] == {"malformed_json": 1}


def test_every_input_format_validates(tmp_path, tiny_model):
    import datasets

    clip = write_clip(tmp_path / "clips" / "one.mp3", seconds=1.5, rate=48_000)
    (tmp_path / "cv.tsv").write_text("client_id\tpath\tsentence\nx\tone.mp3\thello there\nx\ttwo.mp3\tmissing\n")
    flac = write_clip(tmp_path / "x.flac").read_bytes()
    pq.write_table(pa.table({"audio": [{"bytes": flac, "path": "x.flac"}] * 3, "text": ["a", "b", "c"]}),
                   tmp_path / "d.parquet")
    datasets.Dataset.from_dict({"audio": [{"bytes": flac, "path": None}] * 2, "transcription": ["a", ""]}).save_to_disk(
        str(tmp_path / "hf"))
    assert clip.exists()
    expected = {
        "cv.tsv": {"rows": 2, "accepted": 1, "rejected": 1, "reasons": {"missing_file": 1}},
        "d.parquet": {"rows": 3, "accepted": 3, "rejected": 0, "reasons": {}},
        "hf": {"rows": 2, "accepted": 1, "rejected": 1, "reasons": {"empty_transcript": 1}},
    }
    for name, want in expected.items():
        got = validate_source(str(tmp_path / name), str(tiny_model))
        assert {k: got[k] for k in want} == want, name
        assert got["hours"] > 0


def test_pipeline_is_lazy_until_consumed(catalogue, tiny_model, tmp_path):
    cfg = config.from_dict({"model": {"name_or_path": str(tiny_model)}, "data": {"train": str(catalogue.manifest)},
                            "output_dir": str(tmp_path)})
    sink = data.open_sink(None)
    ds = data.build_dataset(cfg, "train", sink, enforce_limit=False)
    assert ray.get(sink.summary.remote("train"))["rows"] == 0  # building ran nothing: no materialize()
    first = next(iter(ds.iter_batches(batch_size=1, batch_format="numpy")))
    assert first["audio"].dtype == object and np.frombuffer(first["audio"][0], np.int16).size > 0
    assert ray.get(sink.summary.remote("train"))["rows"] > 0


def test_training_rows_get_timestamp_labels_and_evaluation_rows_do_not(tmp_path):
    from pathlib import Path

    from ray_asr import labels
    from ray_asr.tiny import build_tiny_whisper

    model = build_tiny_whisper(tmp_path / "tiny", timestamps=True)
    speech = str(Path(__file__).resolve().parents[1] / "data" / "speech" / "manifest.jsonl")
    cfg = config.from_dict({"model": {"name_or_path": str(model)}, "output_dir": str(tmp_path),
                            "data": {"train": speech, "eval": speech, "labels": {"timestamps": 1.0}}})
    tokenizer = labels.load_tokenizer(str(model), "en", "transcribe")
    sink = data.open_sink(None)
    train, evaluation = (_rows(data.build_dataset(cfg, split, sink)) for split in ("train", "eval"))
    assert len(train) == len(evaluation) > 0
    for row in train:
        start, end = row["labels"][2], row["labels"][-2]
        assert tokenizer.timestamp_begin <= start < end and row["labels"][:2] == list(tokenizer.prefix[:2])
        wave = audio.from_wire(row["audio"], "int16")
        bounds = audio.speech_bounds(wave)
        assert (start - tokenizer.timestamp_begin) * 0.02 == pytest.approx(bounds[0], abs=0.011)
    assert all(row["labels"][:3] == list(tokenizer.prefix) for row in evaluation)


def test_mixed_sets_and_a_long_recording_flow_through_the_training_split(tmp_path):
    import soundfile as sf

    from ray_asr import labels
    from ray_asr.tiny import build_tiny_whisper

    model = build_tiny_whisper(tmp_path / "tiny", timestamps=True)
    clip = write_clip(tmp_path / "a.wav")
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.flac", (0.1 * rng.standard_normal(70 * 16_000)).astype(np.float32), 16_000)
    segments = [{"start": 1.0 + 7 * i, "end": 6.0 + 7 * i, "text": f"part {i}"} for i in range(9)]
    rows = [{"audio": clip.name, "text": f"clip {i}", "speaker": f"s{i % 2}"} for i in range(40)]
    rows.append({"audio": "long.flac", "text": " ".join(s["text"] for s in segments), "segments": segments})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "german.jsonl").write_text("".join(json.dumps({"audio": clip.name, "text": f"satz {i}", "language": "de"})
                                                   + "\n" for i in range(8)))
    cfg = config.from_dict({"model": {"name_or_path": str(model)}, "output_dir": str(tmp_path),
                            "data": {"train": str(tmp_path / "train.jsonl"), "prepare_batch_size": 8,
                                     "mix": [{"manifest": str(tmp_path / "german.jsonl"), "weight": 0.5}]}})
    tokenizer = labels.load_tokenizer(str(model), "en", "transcribe")
    sink = data.open_sink(None)
    out = _rows(data.build_dataset(cfg, "train", sink))
    windows = [r for r in out if r["id"].startswith("train.jsonl:41#")]
    assert " ".join(r["text"] for r in windows) == rows[-1]["text"] and len(windows) == 3
    assert all(r["num_samples"] <= 30 * 16_000 and r["labels"][2] >= tokenizer.timestamp_begin for r in windows)
    assert [r["previous"] for r in windows] == [None, windows[0]["text"], windows[1]["text"]]  # the recording's own
    clips = {int(r["id"].split(":")[1]) - 1: r for r in out if r["text"].startswith("clip ")}
    said_before = [(i, r["previous"]) for i, r in clips.items() if r["previous"] is not None]
    assert len(said_before) >= 20 and all(previous == f"clip {i - 2}" for i, previous in said_before)  # same speaker
    german = [r for r in out if r["id"].startswith("german.jsonl:")]
    # 0.5 per training row (41): about 20 German rows, so the 8 repeat under new ids, each with <|de|>
    assert 12 <= len(german) <= 28 and len({r["id"] for r in german}) == len(german)
    assert all(r["labels"][0] == labels.language_token(tokenizer, "de") for r in german)
    assert ray.get(sink.summary.remote("train"))["rejected"] == 0
