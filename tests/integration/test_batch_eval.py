"""`ray-asr evaluate --num-workers 2`: Ray Data batch inference gives the one-process report on the same set."""

from __future__ import annotations

import pytest

from ray_asr import batch_eval, evaluate

pytestmark = pytest.mark.usefixtures("ray_local")


def test_two_replicas_report_what_one_process_does(catalogue, tiny_model):
    alone = evaluate.evaluate_source(str(tiny_model), str(catalogue.manifest), batch_size=4)
    spread = batch_eval.evaluate(str(tiny_model), str(catalogue.manifest), num_workers=2, batch_size=4)
    assert spread["num_utterances"] == alone["num_utterances"] == len(catalogue.good)
    assert spread["rejected"] == alone["rejected"] and sum(alone["rejected"].values()) == len(catalogue.bad)
    for key in ("wer", "cer", "substitutions", "deletions", "insertions", "runaway_outputs", "repetition_rate"):
        assert spread[key] == pytest.approx(alone[key]), key
    by_id = {row["id"]: row for row in alone["per_utterance"]}
    assert {row["id"]: row for row in spread["per_utterance"]} == by_id


def test_more_replicas_than_the_cluster_can_hold_fail_in_one_line(tiny_model, catalogue):
    with pytest.raises(ValueError, match="--num-workers 8: the cluster's 2 CPUs leave"):
        batch_eval.evaluate(str(tiny_model), str(catalogue.manifest), num_workers=8)
