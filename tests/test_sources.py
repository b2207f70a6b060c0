"""Readers: JSONL sharding and line numbers, Common Voice TSV, parquet, HF save_to_disk folders."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from audio_fixtures import write_clip

from ray_asr import sources


def _manifest(path, n, trailing_newline=True):
    lines = [json.dumps({"audio": f"clips/{i}.wav", "text": f"row {i}"}) for i in range(n)]
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    return path


@pytest.mark.parametrize("trailing", [True, False])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 25])
def test_jsonl_shards_cover_every_line_once(tmp_path, monkeypatch, n, trailing):
    monkeypatch.setattr(sources, "LINES_PER_SHARD", 4)
    manifest = _manifest(tmp_path / "m.jsonl", n, trailing)
    shards, total = sources.plan(manifest)
    assert total == n
    assert len(shards) == -(-n // 4)
    rows = sources.read_all(manifest)
    assert [r["id"] for r in rows] == [f"m.jsonl:{i + 1}" for i in range(n)]
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(n)]
    assert all(r["audio_path"] == str(tmp_path / "clips" / f"{i}.wav") for i, r in enumerate(rows))


def test_blank_lines_are_not_rows_and_line_numbers_stay_true(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "one"}\n\n   \n{"audio": "b.wav", "text": "two"}\n\n')
    rows = sources.read_all(manifest)
    assert [r["id"] for r in rows] == ["m.jsonl:1", "m.jsonl:4"]


def test_common_voice_tsv(tmp_path):
    write_clip(tmp_path / "clips" / "common_voice_en_1.mp3", rate=48_000)
    (tmp_path / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\n"
        'abc\tcommon_voice_en_1.mp3\tHe said "hello" there.\t2\t0\n'
        "abc\tcommon_voice_en_2.mp3\tshort row\n"
    )
    _, total = sources.plan(tmp_path / "train.tsv")
    assert total == 2
    rows = sources.read_all(tmp_path / "train.tsv")
    assert rows[0]["text"] == 'He said "hello" there.'  # quotes are text, not CSV quoting
    assert rows[0]["audio_path"] == str(tmp_path / "clips" / "common_voice_en_1.mp3")
    assert rows[0]["id"] == "train.tsv:2"
    assert rows[1]["error"] == "missing_keys"


def test_common_voice_folder_asks_for_a_table(tmp_path):
    (tmp_path / "train.tsv").write_text("path\tsentence\n")
    with pytest.raises(sources.SourceError, match="train.tsv"):
        sources.plan(tmp_path)


def test_parquet_with_embedded_audio_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "ROWS_PER_SHARD", 2)
    clip = write_clip(tmp_path / "c.wav").read_bytes()
    table = pa.table({
        "audio": [{"bytes": clip, "path": "c.wav"}, {"bytes": None, "path": "c.wav"}, {"bytes": clip, "path": None}],
        "sentence": ["one", "two", "three"],
    })
    pq.write_table(table, tmp_path / "d.parquet")
    shards, total = sources.plan(tmp_path / "d.parquet")
    assert (len(shards), total) == (2, 3)
    rows = sources.read_all(tmp_path / "d.parquet")
    assert [r["text"] for r in rows] == ["one", "two", "three"]
    assert rows[0]["audio_bytes"] == clip and rows[0]["audio_path"] is None
    assert rows[1]["audio_bytes"] is None and rows[1]["audio_path"] == str(tmp_path / "c.wav")
    assert "bytes" not in json.loads(rows[0]["raw"])["audio"]  # quarantine rows never carry the audio


def test_hf_save_to_disk_folder(tmp_path):
    import datasets

    clip = write_clip(tmp_path / "c.wav").read_bytes()
    storage = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                 "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"audio": [{"bytes": clip, "path": "c.wav"}] * 3, "text": ["a", "b", "c"]},
                                    features=storage)
    # The Audio feature as `datasets` stores it (struct of bytes and path), without decoding support.
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=16_000, decode=False))
    ds.save_to_disk(str(tmp_path / "hf"))
    _, total = sources.plan(tmp_path / "hf")
    rows = sources.read_all(tmp_path / "hf")
    assert total == 3 and [r["text"] for r in rows] == ["a", "b", "c"]
    assert all(r["audio_bytes"] == clip for r in rows)
    assert [r["id"] for r in rows] == ["hf:0", "hf:1", "hf:2"]


@pytest.mark.parametrize("name,message", [
    ("nothing.jsonl", "does not exist"),
    ("notes.txt", "unknown format"),
])
def test_unreadable_sources_name_the_file(tmp_path, name, message):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("hello")
    with pytest.raises(sources.SourceError, match=message) as err:
        sources.plan(tmp_path / name)
    assert name in str(err.value)
