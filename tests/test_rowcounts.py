"""Per-row counters of the data tier (`ray_asr.rowcounts`): the same counts as a dict, in a fraction of its memory."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr import data, rowcounts
from ray_asr.rowcounts import RowCounts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(min_size=1, max_size=6), max_size=40), max_size=30), st.integers(1, 16))
def test_counts_equal_a_dicts_across_merges(batches, buffer):
    counts, expected = RowCounts(), {}
    original, rowcounts.BUFFER = rowcounts.BUFFER, buffer  # tiny buffers: merges between and within batches
    try:
        for batch in batches:
            before = []
            for row_id in batch:
                before.append(expected.get(row_id, 0))
                expected[row_id] = expected.get(row_id, 0) + 1
            assert counts.bump(batch) == before
    finally:
        rowcounts.BUFFER = original
    assert len(counts) == len(expected)


def test_a_million_ids_take_about_ten_bytes_each():
    counts = RowCounts()
    for start in range(0, 1_000_000, 50_000):
        counts.bump([f"r{n:08d}" for n in range(start, start + 50_000)])
    assert counts.bump(["r00000000", "r00999999", "new"]) == [1, 1, 0]
    assert counts.nbytes() < 12 * 1_000_000  # a dict of these ids to ints holds ~150 bytes a row


def test_the_sink_counts_a_row_once_over_epochs_and_quarantines_it_once(tmp_path):
    sink = data.QuarantineSink.__ray_actor_class__(str(tmp_path / "q.jsonl"))
    sink.register("train", 4, 0.5)
    bad = {"id": "c", "reason": "unreadable", "detail": "no file"}
    for _ in range(3):  # three epochs of the same rows
        assert sink.record("train", [("a", 1.5), ("b", 2.5)], [bad]) is None
    assert sink.summary("train") == {"rows": 3, "accepted": 2, "rejected": 1, "reasons": {"unreadable": 1},
                                     "hours": 4.0 / 3600}
    assert sink.record("train", [], [{**bad, "id": "d"}, {**bad, "id": "e"}]).startswith(
        "data.train: 3 of 4 rows rejected, over data.max_rejected_fraction=0.5")
    lines = (tmp_path / "q.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["c", "d", "e"]
