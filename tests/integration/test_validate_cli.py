"""`ray-asr validate` as a user runs it: table or JSON, quarantine file, exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import ray

pytestmark = pytest.mark.usefixtures("ray_local")


def _validate(*args, cwd=None):
    # On the test's Ray, as on a cluster the user's Ray is already up (a fresh one costs ~10 s a run here).
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run([sys.executable, "-m", "ray_asr", "validate", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env, check=False)


def test_mixed_manifest_accepts_exactly_the_good_rows(catalogue, tiny_model, tmp_path):
    quarantine = tmp_path / "q.jsonl"
    result = _validate(catalogue.manifest, "--json", "--model", tiny_model, "--quarantine", quarantine)
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    expected_reasons: dict[str, int] = {}
    for reason in catalogue.bad.values():
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert summary["rows"] == len(catalogue.expected)
    assert summary["accepted"] == len(catalogue.good) and summary["rejected"] == len(catalogue.bad)
    assert summary["reasons"] == expected_reasons
    assert 0 < summary["hours"] < 0.01
    rows = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rows} == catalogue.bad


def test_clean_manifest_prints_a_table_and_exits_zero(tmp_path, tiny_model):
    from audio_fixtures import write_clip

    write_clip(tmp_path / "a.flac", seconds=2.0, rate=44_100, channels=2)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.flac", "text": "hello"}) + "\n")
    result = _validate(tmp_path / "m.jsonl", "--model", tiny_model)
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout
    assert "accepted" in table and "hours (accepted)" in table
    assert [line.split()[-1] for line in table.splitlines() if line.startswith(("rows", "accepted", "rejected"))] == [
        "1", "1", "0"]


def test_unreadable_manifest_exits_two_with_one_line(tmp_path, tiny_model):
    result = _validate(tmp_path / "missing.jsonl", "--model", tiny_model)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.jsonl: does not exist" in result.stderr
