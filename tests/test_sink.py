"""The quarantine sink: each row counted and quarantined once over epochs and retried pieces, in state per piece."""

from __future__ import annotations

import json
import pickle

from ray_asr import data


def test_the_sink_counts_a_row_once_over_epochs_and_quarantines_it_once(tmp_path):
    sink = data.QuarantineSink.__ray_actor_class__(str(tmp_path / "q.jsonl"))
    sink.register("train", 4, 0.5)
    bad = {"id": "c", "reason": "unreadable", "detail": "no file"}
    piece = (0, 0, 1)
    for epoch in range(3):  # three epochs of the same rows
        assert sink.start("train", piece) == epoch  # the rows' pass: augmentation draws new noise each
        assert sink.record("train", piece, 0, [("a", 1.5), ("b", 2.5)], [bad]) is None
    assert sink.summary("train") == {"rows": 3, "accepted": 2, "rejected": 1, "reasons": {"unreadable": 1},
                                     "hours": 4.0 / 3600}
    assert sink.record("train", (1, 0, 1), 0, [], [{**bad, "id": "d"}, {**bad, "id": "e"}]).startswith(
        "data.train: 3 of 4 rows rejected, over data.max_rejected_fraction=0.5")
    lines = (tmp_path / "q.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["c", "d", "e"]


def test_a_piece_retried_midway_counts_only_the_rows_not_yet_counted(tmp_path):
    sink = data.QuarantineSink.__ray_actor_class__(None)
    sink.register("train", 30, None)
    piece = (3, 1, 2)
    sink.start("train", piece)
    sink.record("train", piece, 0, [(f"r{i}", 1.0) for i in range(8)], [])
    sink.record("train", piece, 8, [(f"r{i}", 1.0) for i in range(8, 16)], [])  # the actor dies after this batch
    assert sink.start("train", piece) == 1  # Ray Data retries the piece on another actor, from its first row
    for offset in (0, 8, 16):
        sink.record("train", piece, offset, [(f"r{i}", 1.0) for i in range(offset, offset + 8)], [])
    assert sink.summary("train")["accepted"] == 24


def test_what_the_sink_holds_does_not_grow_with_the_rows(tmp_path):
    def state_after(rows: int) -> int:
        sink = data.QuarantineSink.__ray_actor_class__(None)
        sink.register("train", rows, None)
        pieces = [(p, 0, 1) for p in range(16)]  # a plan's pieces: their number is capped, not their rows
        for piece in pieces:
            sink.start("train", piece)
            for offset in range(0, rows // 16, 64):
                sink.record("train", piece, offset, [(f"{piece}:{offset + i}", 1.0) for i in range(64)], [])
        assert sink.summary("train")["accepted"] == rows
        return len(pickle.dumps(sink.splits))

    # 128 times the rows: the same pieces, only wider integers in the counts
    assert state_after(131_072) <= state_after(1_024) + 64
