"""Readers: JSONL sharding and line numbers, Common Voice TSV, parquet, HF save_to_disk folders, HF audiofolder,
Kaldi data dirs, lhotse manifests, NeMo segments and hf:// streams."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from audio_fixtures import write_clip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_a_large_manifest_is_read_by_a_bounded_number_of_tasks_and_blocks(tmp_path, monkeypatch):
    from ray_asr import data

    monkeypatch.setattr(sources, "LINES_PER_SHARD", 4)
    monkeypatch.setattr(sources, "MAX_SHARDS", 8)
    manifest = _manifest(tmp_path / "m.jsonl", 1000)
    shards, total = sources.plan(manifest)
    assert total == 1000 and len(shards) == 8  # 250 shards of 4 lines merged into 8 of 128 (the last shorter)
    assert [r["id"] for r in sources.read_all(manifest)] == [f"m.jsonl:{i + 1}" for i in range(1000)]
    assert data.num_blocks(1_000_000, 8, 8) == data.MAX_BLOCKS and data.num_blocks(400, 4, 8) == 50
    # a small split still spreads over workers (blocks of 8 rows at least), not one block of 64 clips
    assert data.num_blocks(64, 1, 64) == 8 and data.num_blocks(400, 1, 64) == 16 and data.num_blocks(5, 1, 64) == 1
    assert data.num_blocks(2048, 1, 64) == 32 and data.num_blocks(48, 1, 8) == 6


def test_the_training_split_reads_its_pieces_in_a_seeded_order(tmp_path):
    from ray_asr import data

    manifest = _manifest(tmp_path / "m.jsonl", 300)

    def read_order(seed: int, shuffled: bool) -> list[tuple]:
        tasks = data.ManifestDatasource(manifest, seed=seed, shuffled=shuffled).get_read_tasks(30)
        return [tuple(row.values()) for task in tasks for block in task() for row in block.to_pylist()]

    plan = read_order(0, False)
    assert plan == sorted(plan) and len(set(plan)) == len(plan) >= 30  # unshuffled (evaluation): the plan's order
    first = read_order(0, True)
    assert sorted(first) == plan and first != plan  # every piece once, not in the manifest's order
    assert read_order(0, True) == first and read_order(1, True) != first  # the seed decides, the same on a rerun


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 40), blanks=st.sets(st.integers(0, 45), max_size=6), pieces=st.integers(1, 12))
def test_pieces_of_a_shard_read_each_row_once_in_order(tmp_path, rows, blanks, pieces):
    lines = [json.dumps({"audio": f"{i}.wav", "text": f"row {i}"}) for i in range(rows)]
    for at in sorted(blanks, reverse=True):
        lines.insert(min(at, len(lines)), "")  # blank lines hold no row, wherever they fall
    (tmp_path / "m.jsonl").write_text("".join(f"{line}\n" for line in lines))
    table = pa.table({"sentence": [f"row {i}" for i in range(rows)], "path": [f"{i}.wav" for i in range(rows)]})
    pq.write_table(table, tmp_path / "t.parquet")
    for source in (tmp_path / "m.jsonl", tmp_path / "t.parquet"):
        (shard,), _ = sources.plan(source)  # under LINES_PER_SHARD and ROWS_PER_SHARD: one shard
        whole = sources.read_shard(shard).column("id").to_pylist()
        parts = [sources.read_shard(shard, k, pieces).column("id").to_pylist() for k in range(pieces)]
        assert [i for part in parts for i in part] == whole and len(whole) == rows
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # even: blank lines are dropped before the split


def test_a_shard_that_reads_whole_is_never_read_in_pieces(tmp_path):
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.write('{"audio": "a.wav", "text": "one"}\n')
    (shard,), _ = sources.plan(tmp_path / "m.jsonl.gz")
    assert not sources.splits(shard)  # a piece would decompress the file from its start all the same
    with pytest.raises(ValueError, match="read whole"):
        sources.read_shard(shard, 0, 2)


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
    ("notes.txt", "unknown format.*Kaldi.*lhotse.*hf://"),
    ("broken.jsonl.gz", "cannot be read"),
])
def test_unreadable_sources_name_the_file(tmp_path, name, message):
    if name.endswith((".txt", ".gz")):
        (tmp_path / name).write_text("hello")
    with pytest.raises(sources.SourceError, match=message) as err:
        sources.plan(tmp_path / name)
    assert name in str(err.value)


def _columns(rows, *keys):
    return [tuple(r[k] for k in keys) for r in rows]


def test_audiofolder_metadata_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "LINES_PER_SHARD", 2)
    folder = tmp_path / "af" / "train"
    for name in ("a.wav", "clips/b.wav", "clips/c.wav"):
        write_clip(folder / name)
    (folder / "metadata.csv").write_text(
        'file_name,transcription,speaker\n'
        'a.wav,"hello, world",s1\n'
        'clips/b.wav,"two\nlines",s2\n'  # a quoted newline is inside the record, not a record boundary
        '\n'
        'clips/c.wav,three,s3\n'
        'clips/d.wav\n'
    )
    shards, total = sources.plan(folder)
    assert total == 5 and len(shards) == 3  # a blank line counts (an upper bound, like manifests)
    rows = sources.read_all(folder)
    assert _columns(rows, "id", "text", "audio_path", "error") == [
        ("metadata.csv:2", "hello, world", str(folder / "a.wav"), None),
        ("metadata.csv:3", "two\nlines", str(folder / "clips" / "b.wav"), None),
        ("metadata.csv:6", "three", str(folder / "clips" / "c.wav"), None),
        ("metadata.csv:7", None, None, "missing_keys"),
    ]
    assert all(r["offset"] is None and r["duration"] is None for r in rows)
    with pytest.raises(sources.SourceError, match=r"audiofolder with splits; name one, e.g. .*train"):
        sources.plan(tmp_path / "af")


def test_audiofolder_metadata_jsonl(tmp_path):
    write_clip(tmp_path / "x" / "a.flac")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x/a.flac", "sentence": "one"}) + "\n")
    rows = sources.read_all(tmp_path)
    assert _columns(rows, "id", "text", "audio_path") == [("metadata.jsonl:1", "one", str(tmp_path / "x" / "a.flac"))]


def test_audiofolder_without_a_text_column_is_refused(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,label\na.wav,3\n")
    with pytest.raises(sources.SourceError, match="metadata.csv: an audiofolder needs a file_name column"):
        sources.plan(tmp_path)


def _kaldi_dir(root):
    data = root / "data" / "train"
    write_clip(data / "r1.wav", seconds=3.0)
    write_clip(root / "wav" / "r2.wav", seconds=2.0)  # relative to the recipe dir (the working directory)
    (data / "wav.scp").write_text(
        f"r1 r1.wav\nr2 wav/r2.wav\nr3 sox {root}/x.flac -t wav - |\nr4 {root / 'abs.wav'}\n")
    return data


def test_kaldi_data_dir_with_segments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _kaldi_dir(tmp_path)
    (data / "text").write_text("u1 HELLO THERE\nu2 GENERAL KENOBI\nu3 PIPED AUDIO\nu4 NO AUDIO\nu5 NO SEGMENT\n"
                               "u6 TO THE END\n")
    (data / "segments").write_text("u1 r1 0.50 1.75\nu2 r2 0 1.5\nu3 r3 0 1\nu4 r9 0 1\nu6 r1 2.0 -1\n")
    _, total = sources.plan(data)
    assert total == 6
    rows = sources.read_all(data)
    assert _columns(rows, "id", "text", "audio_path", "offset", "duration", "error") == [
        ("text:1", "HELLO THERE", str(data / "r1.wav"), 0.5, 1.25, None),
        ("text:2", "GENERAL KENOBI", str(tmp_path / "wav" / "r2.wav"), 0.0, 1.5, None),
        ("text:3", None, None, None, None, "unsupported_codec"),
        ("text:4", None, None, None, None, "missing_keys"),
        ("text:5", None, None, None, None, "missing_keys"),
        ("text:6", "TO THE END", str(data / "r1.wav"), 2.0, None, None),
    ]
    assert "piped wav.scp entry needs to be written out to a file first" in rows[2]["error_detail"]
    assert "r9" in rows[3]["error_detail"] and "segments" in rows[4]["error_detail"]
    assert json.loads(rows[3]["raw"]) == {"utt_id": "u4", "text": "NO AUDIO", "segments": "r9 0 1", "wav.scp": None}


def test_kaldi_data_dir_without_segments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _kaldi_dir(tmp_path)
    (data / "text").write_text("r4 ABSOLUTE\nr1 WHOLE FILE\nr7 NOWHERE\n")
    rows = sources.read_all(data / "wav.scp")  # a file of the dir names the dir
    assert _columns(rows, "id", "text", "audio_path", "offset", "error") == [
        ("text:1", "ABSOLUTE", str(tmp_path / "abs.wav"), None, None),
        ("text:2", "WHOLE FILE", str(data / "r1.wav"), None, None),
        ("text:3", None, None, None, "missing_keys"),
    ]


def test_kaldi_dir_without_text_is_refused(tmp_path):
    (tmp_path / "wav.scp").write_text("r1 a.wav\n")
    with pytest.raises(sources.SourceError, match="needs wav.scp and text; text missing"):
        sources.plan(tmp_path)


def _cut(cut_id, start, duration, source, supervisions):
    recording = {"id": f"rec-{cut_id}", "sources": [{"type": "file", "channels": [0], "source": source}],
                 "sampling_rate": 16000, "num_samples": 48000, "duration": 3.0, "channel_ids": [0]}
    return {"id": cut_id, "start": start, "duration": duration, "channel": 0, "supervisions": supervisions,
            "recording": recording, "type": "MonoCut"}


def _sup(text, start, duration, recording_id="r"):
    return {"id": f"s-{text}", "recording_id": recording_id, "start": start, "duration": duration, "channel": 0,
            "text": text, "language": "English"}


def test_lhotse_gzipped_cut_set(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "LINES_PER_SHARD", 1)
    monkeypatch.setattr(sources, "JOIN_MAX_SHARDS", 2)
    write_clip(tmp_path / "audio" / "a.flac", seconds=3.0)
    cuts = [
        _cut("c1", 0.0, 3.0, "audio/a.flac", [_sup("first", 0.5, 1.0), _sup("second", 1.5, 1.25)]),
        _cut("c2", 1.0, 2.0, str(tmp_path / "audio" / "a.flac"), [_sup("third", 0.25, 0.5)]),
        _cut("c3", 0.0, 3.0, "audio/a.flac", []),
        {**_cut("c4", 0.0, 1.0, "https://example.org/a.flac", [_sup("remote", 0, 1)]),
         "recording": {"id": "u", "sources": [{"type": "url", "channels": [0], "source": "https://example.org/a.flac"}],
                       "sampling_rate": 16000}},
    ]
    path = tmp_path / "cuts_train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(c) + "\n" for c in cuts))
    shards, total = sources.plan(path)
    assert total == 5  # one row per supervision, one for the cut without any
    assert [(s.start, s.stop) for s in shards] == [(0, 2), (2, 4)]  # line ranges, capped at JOIN_MAX_SHARDS
    rows = sources.read_all(path)
    clip = str(tmp_path / "audio" / "a.flac")
    assert _columns(rows, "id", "text", "audio_path", "offset", "duration", "error") == [
        ("cuts_train.jsonl.gz:1.1", "first", clip, 0.5, 1.0, None),
        ("cuts_train.jsonl.gz:1.2", "second", clip, 1.5, 1.25, None),
        ("cuts_train.jsonl.gz:2", "third", clip, 1.25, 0.5, None),  # a supervision's start is relative to its cut
        ("cuts_train.jsonl.gz:3", None, None, None, None, "missing_keys"),
        ("cuts_train.jsonl.gz:4", None, None, None, None, "unsupported_codec"),
    ]
    assert json.loads(rows[1]["raw"])["supervision"]["text"] == "second"


def test_lhotse_recordings_and_supervisions_pair(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "LINES_PER_SHARD", 2)
    folder = tmp_path / "manifests"
    write_clip(folder / "r1.wav", seconds=2.0)
    write_clip(tmp_path / "r2.wav", seconds=2.0)
    recordings = [{"id": rid, "sources": [{"type": "file", "channels": [0], "source": source}],
                   "sampling_rate": 16000, "num_samples": 32000, "duration": 2.0, "channel_ids": [0]}
                  for rid, source in (("r1", "r1.wav"), ("r2", str(tmp_path / "r2.wav")))]
    supervisions = [_sup("one", 0.0, 1.0, "r1"), _sup("two", 1.0, 0.5, "r2"), _sup("three", 0.5, 1.5, "r1"),
                    _sup("lost", 0.0, 1.0, "r9")]
    with gzip.open(folder / "corpus_recordings_dev.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recordings))
    (folder / "corpus_supervisions_dev.jsonl").write_text("".join(json.dumps(s) + "\n" for s in supervisions))
    expected = [
        ("corpus_supervisions_dev.jsonl:1", "one", str(folder / "r1.wav"), 0.0, 1.0, None),
        ("corpus_supervisions_dev.jsonl:2", "two", str(tmp_path / "r2.wav"), 1.0, 0.5, None),
        ("corpus_supervisions_dev.jsonl:3", "three", str(folder / "r1.wav"), 0.5, 1.5, None),
        ("corpus_supervisions_dev.jsonl:4", None, None, None, None, "missing_keys"),
    ]
    for named in (folder, folder / "corpus_supervisions_dev.jsonl", folder / "corpus_recordings_dev.jsonl.gz"):
        shards, total = sources.plan(named)
        assert (len(shards), total) == (2, 4)
        assert _columns(sources.read_all(named), "id", "text", "audio_path", "offset", "duration", "error") == expected


def test_lhotse_supervisions_without_recordings_are_refused(tmp_path):
    (tmp_path / "x_supervisions.jsonl").write_text(json.dumps(_sup("one", 0.0, 1.0)) + "\n")
    with pytest.raises(sources.SourceError, match="x_supervisions.jsonl: lhotse supervisions need their recordings"):
        sources.plan(tmp_path / "x_supervisions.jsonl")


def test_nemo_manifest_offset_and_duration(tmp_path):
    lines = [{"audio_filepath": "a.wav", "text": "whole", "duration": 2.0},
             {"audio_filepath": "a.wav", "text": "part", "duration": 0.5, "offset": 1.25},
             {"audio_filepath": "a.wav", "text": "odd", "duration": "long"},
             {"audio": "a.wav", "text": "plain manifests ignore segments", "duration": 0.5, "offset": 1.0}]
    (tmp_path / "nemo.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = sources.read_all(tmp_path / "nemo.json")
    assert _columns(rows, "id", "audio_path", "offset", "duration", "error") == [
        ("nemo.json:1", str(tmp_path / "a.wav"), None, 2.0, None),
        ("nemo.json:2", str(tmp_path / "a.wav"), 1.25, 0.5, None),
        ("nemo.json:3", None, None, None, "missing_keys"),
        ("nemo.json:4", str(tmp_path / "a.wav"), None, None, None),
    ]


def test_gzipped_plain_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "LINES_PER_SHARD", 2)
    monkeypatch.setattr(sources, "JOIN_MAX_SHARDS", 3)
    lines = [json.dumps({"audio": f"{i}.wav", "text": f"row {i}"}) for i in range(9)]
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.write("\n".join(lines))  # no final newline
    shards, total = sources.plan(tmp_path / "m.jsonl.gz")
    assert total == 9 and len(shards) == 3
    rows = sources.read_all(tmp_path / "m.jsonl.gz")
    assert [r["id"] for r in rows] == [f"m.jsonl.gz:{i + 1}" for i in range(9)]
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(9)]


def test_hf_stream_of_a_local_audiofolder(tmp_path):
    folder = tmp_path / "voices"
    for name in ("a.wav", "sub/b.wav"):
        write_clip(folder / name)
    (folder / "metadata.csv").write_text("file_name,transcription\na.wav,first\nsub/b.wav,second\n")
    source = f"hf://{folder}?split=train"
    shards, total = sources.plan(source)
    assert (len(shards), total) == (1, 2)  # counted by a streamed pass: a local folder has no recorded count
    rows = sources.read_all(source)
    assert _columns(rows, "id", "text", "audio_path", "source") == [
        ("voices:train:0.0", "first", str(folder / "a.wav"), source),
        ("voices:train:0.1", "second", str(folder / "sub" / "b.wav"), source),
    ]
    with pytest.raises(sources.SourceError, match=r"hf://x\?splt=train: expected hf://NAME"):
        sources.plan("hf://x?splt=train")
    with pytest.raises(sources.SourceError, match=r"^hf://.*nowhere.*: cannot be streamed"):
        sources.plan(f"hf://{tmp_path / 'nowhere'}")
