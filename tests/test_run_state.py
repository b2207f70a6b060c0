"""The run state a checkpoint carries, and the one owner of split names and metric keys."""

from __future__ import annotations

from ray_asr import metrics
from ray_asr.checkpoint import RunState


def test_run_state_round_trips_through_json_and_knows_when_it_is_finished():
    state = RunState(epoch=2, batches_done=0, step=16, history=[{"step": 0, "wer": 0.5}], done=True, evaluated_step=16)
    back = RunState.from_json(state.to_json())
    assert back == state
    assert back.finished(epochs=2) and not back.finished(epochs=3)  # more epochs asked: training goes on
    assert not RunState(epoch=2, done=False).finished(epochs=2)


def test_run_state_reads_states_written_before_new_fields():
    assert RunState.from_json('{"epoch": 1, "batches_done": 3, "step": 7, "history": [], "done": false}') == \
        RunState(epoch=1, batches_done=3, step=7)


def test_metric_keys_have_one_spelling_per_split():
    found = {"wer": 0.25, "eval_loss": 1.5}
    row = {"step": 4, **metrics.split_row("eval", found), **metrics.split_row("general_eval", {"wer": 0.1})}
    assert row == {"step": 4, "wer": 0.25, "eval_loss": 1.5, "general_wer": 0.1}
    assert metrics.of_split(row, "eval") == found
    assert metrics.of_split(row, "general_eval") == {"wer": 0.1}
    assert metrics.key("general_eval", "eval_loss") == "general_eval_loss"
