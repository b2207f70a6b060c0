"""Reward-based fine-tuning on the tiny model: the MWER loss by hand, its gradient's direction, the loop
penalty, feedback rows (corrections and ratings) and their config."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from ray_asr import config, cross_attention, labels, reward, sources
from ray_asr.config import ConfigError
from ray_asr.evaluate import PROMPT_TOKENS

WEIGHTS = {"wer": 1.0, "loop": 1.0, "runaway": 1.0}


@pytest.fixture()
def model(tiny_model):
    torch.manual_seed(0)
    return WhisperForConditionalGeneration.from_pretrained(tiny_model).train()


def _hidden(model, seed: int = 0, clips: int = 1) -> torch.Tensor:
    features = torch.randn(clips, 80, 3000, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.model.encoder(input_features=features).last_hidden_state


def _start(tokenizer) -> list[int]:
    """The four tokens generation starts from: <|startoftranscript|> and the labels' prompt."""
    return [tokenizer.backend.token_to_id("<|startoftranscript|>"), *tokenizer.prefix]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.backend.encode(text, add_special_tokens=False).ids


def _nbest(tokenizer, texts: list[str], clip: int = 0) -> reward.NBest:
    ids = [_ids(tokenizer, t) for t in texts]
    return reward.NBest([_start(tokenizer) + i + [tokenizer.eos_token_id] for i in ids], ids, [True] * len(ids),
                        [clip] * len(ids))


def _forward(model):
    from transformers.modeling_outputs import BaseModelOutput

    return lambda hidden, inputs: model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                        decoder_input_ids=inputs, use_cache=False).logits


def _probabilities(model, tokenizer, hidden, hyps) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(reward.sequence_scores(_forward(model), hidden, hyps, PROMPT_TOKENS,
                                                    tokenizer.eos_token_id, 0.0), dim=0)


def _steps(model, loss_of, n: int = 3, lr: float = 0.05) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(n):
        optimizer.zero_grad()
        loss_of().backward()
        optimizer.step()


def test_mwer_loss_is_the_expected_cost_above_the_nbest_mean_under_renormalised_probabilities():
    # Clip 0: p = (0.5, 0.3, 0.2) (the scores' constant offset cancels), costs (0, 1, 2), mean 1:
    # 0.5 * -1 + 0.3 * 0 + 0.2 * 1 = -0.3. Clip 1: p = (0.5, 0.5), costs (1, 3), mean 2: 0. Clip 2 has one
    # hypothesis: 0. Mean over the three clips: -0.1.
    scores = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.2), 0.0, 0.0, -4.0]) - 7.0
    cost = torch.tensor([0.0, 1.0, 2.0, 1.0, 3.0, 5.0])
    loss = reward.mwer_loss(scores, cost, [0, 0, 0, 1, 1, 2])
    assert loss.item() == pytest.approx(-0.1, abs=1e-6)
    # Equal costs leave nothing to learn, whatever the probabilities.
    assert reward.mwer_loss(scores[:3], torch.ones(3), [0, 0, 0]).item() == pytest.approx(0.0, abs=1e-7)


def test_cost_adds_the_utterance_wer_and_the_loop_and_runaway_penalties(tokenizer):
    encode = lambda text: _ids(tokenizer, text)
    # "a x c" against "a b c d": one substitution and one deletion over four words.
    assert reward.cost(tokenizer, encode("a x c"), True, "a b c d", WEIGHTS, "en") == (0.5, 2, 4)
    assert reward.cost(tokenizer, encode("a x c"), False, "a b c d", {**WEIGHTS, "runaway": 2.0}, "en")[0] == 2.5
    looping = encode("go go go go go")
    value, errors, words = reward.cost(tokenizer, looping, True, "go", {**WEIGHTS, "wer": 0.5}, "en")
    assert (errors, words) == (4, 1) and value == pytest.approx(0.5 * 4 + 1.0)


def test_mwer_gradient_raises_the_probability_of_the_lowest_error_hypothesis(model, tokenizer):
    reference = "ka tu ra"
    hyps = _nbest(tokenizer, ["ka tu ra", "ka to ra", "ki to re"])
    cost = reward.costs(tokenizer, hyps, [reference], WEIGHTS, "en")
    assert cost.tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    hidden = _hidden(model)
    before = _probabilities(model, tokenizer, hidden, hyps)
    _steps(model, lambda: reward.mwer_loss(reward.sequence_scores(_forward(model), hidden, hyps, PROMPT_TOKENS,
                                                                  tokenizer.eos_token_id, 0.0), cost, hyps.owner))
    after = _probabilities(model, tokenizer, hidden, hyps)
    assert after[0] > before[0] and after[2] < before[2], (before, after)


def test_the_loop_penalty_lowers_the_probability_of_a_looping_hypothesis(model, tokenizer):
    # Both hypotheses get the reference's two words wrong and insert three more (WER 2.5); only one loops
    # (a phrase four times running). With the loop penalty off their costs are equal: nothing to prefer.
    reference = "ka tu"
    hyps = _nbest(tokenizer, ["la la la la la", "be di mo su ne"])
    assert reward.costs(tokenizer, hyps, [reference], {**WEIGHTS, "loop": 0.0}, "en").tolist() == [2.5, 2.5]
    cost = reward.costs(tokenizer, hyps, [reference], WEIGHTS, "en")
    assert cost.tolist() == [3.5, 2.5]
    hidden = _hidden(model, seed=1)
    before = _probabilities(model, tokenizer, hidden, hyps)
    _steps(model, lambda: reward.mwer_loss(reward.sequence_scores(_forward(model), hidden, hyps, PROMPT_TOKENS,
                                                                  tokenizer.eos_token_id, 0.0), cost, hyps.owner))
    after = _probabilities(model, tokenizer, hidden, hyps)
    assert after[0] < before[0], (before, after)


def _feedback_batch(tokenizer, texts: list[str], ratings: list[float | None]) -> dict:
    from ray_asr.collate import pad_labels

    return {"labels": pad_labels([labels.encode(tokenizer, t) for t in texts]), "text": texts,
            "rating": [float("nan") if r is None else r for r in ratings], "id": [f"r{i}" for i in range(len(texts))]}


def _objective(tokenizer, objective: str = "ce", **mwer) -> reward.Objective:
    cfg = config.from_dict({"train": {"objective": objective, "mwer": mwer}}).train
    return reward.Objective(cfg, tokenizer, "en", seed=0)


def _hypothesis_log_prob(model, tokenizer, hidden, text: str) -> float:
    """The mean token log-probability of `text` (length penalty 1)."""
    with torch.no_grad():
        return reward.sequence_scores(_forward(model), hidden, _nbest(tokenizer, [text]), PROMPT_TOKENS,
                                      tokenizer.eos_token_id, 1.0).item()


@pytest.mark.parametrize("rating", [1.0, -1.0])
def test_a_rating_s_sign_decides_whether_its_hypothesis_becomes_more_or_less_likely(model, tokenizer, rating):
    objective = _objective(tokenizer)
    batch = _feedback_batch(tokenizer, ["ka tu ra"], [rating])
    assert objective.applies(batch) and reward.rated(batch) == [0]
    hidden = _hidden(model, seed=2)
    before = _hypothesis_log_prob(model, tokenizer, hidden, "ka tu ra")
    _steps(model, lambda: objective.loss(model, hidden, batch, True, False, lambda n: n, 0), n=1, lr=0.1)
    after = _hypothesis_log_prob(model, tokenizer, hidden, "ka tu ra")
    assert (after - before) * rating > 0, (before, after)


def test_corrections_train_as_references_and_rated_rows_never_as_references(model, tokenizer):
    # A batch of a corrected row and a rated one: the cross-entropy part is the correction's alone (the rated
    # hypothesis is not imitated), plus the rated row's REINFORCE term; a rating of 0 adds nothing.
    objective = _objective(tokenizer)
    hidden = _hidden(model, seed=3, clips=2)
    batch = _feedback_batch(tokenizer, ["ka tu", "ti ko ra"], [None, 0.0])
    with torch.no_grad():
        loss = objective.loss(model, hidden, batch, True, False, lambda n: n, 0)
        from transformers.modeling_outputs import BaseModelOutput

        alone = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden[:1]), labels=batch["labels"][:1]).loss
    assert loss.item() == pytest.approx(alone.item(), rel=1e-5)
    assert not _objective(tokenizer).applies(_feedback_batch(tokenizer, ["ka"], [None]))  # plain CE: the usual path


def test_rating_baseline_is_the_running_mean_of_ratings_seen():
    baseline = reward.RatingBaseline()
    assert baseline.advantages([1.0, 1.0]) == pytest.approx([1.0, 0.9])  # the first against neutral 0, then 0.1
    assert baseline.value == pytest.approx(0.19)


def test_mwer_objective_decodes_an_nbest_and_gives_a_finite_loss_with_gradients(model, tokenizer):
    objective = _objective(tokenizer, "mwer", n_best=3, sampling="sample", temperature=1.0)
    batch = _feedback_batch(tokenizer, ["ka tu", "ti ko ra"], [None, None])
    hidden = _hidden(model, seed=4, clips=2)
    loss = objective.loss(model, hidden, batch, True, False, lambda n: n, 5)
    loss.backward()
    assert torch.isfinite(loss)
    decoder = model.model.decoder.layers[0].fc1.weight.grad
    assert decoder is not None and decoder.abs().sum() > 0 and model.training
    # The same step and seed sample the same N-best; another step, another.
    again = _objective(tokenizer, "mwer", n_best=3, sampling="sample", temperature=1.0)
    assert again.loss(model, hidden, batch, True, False, lambda n: n, 5).item() == pytest.approx(loss.item())


@pytest.mark.parametrize("sampling", ["beam", "sample"])
def test_sharing_a_clip_s_cross_attention_among_its_hypotheses_changes_no_hypothesis_loss_or_gradient(
        model, tokenizer, monkeypatch, sampling):
    """Each clip's keys and values projected once and never reordered among its beams: the same N-best, loss and
    gradients as transformers' own per-row projections and cache."""
    model.config.dropout = model.config.attention_dropout = 0.0  # the two passes must see the same network
    model.train()
    cross_attention.install(model)  # as training runs it
    hidden = _hidden(model, seed=6, clips=3)
    batch = _feedback_batch(tokenizer, ["ka tu", "ti ko ra", "ra ka"], [None, None, None])
    calls = []
    projection = model.model.decoder.layers[0].encoder_attn.k_proj
    projection.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))

    def step():
        model.zero_grad()
        objective = _objective(tokenizer, "mwer", n_best=3, sampling=sampling, temperature=1.0)
        found = reward.nbest(model, tokenizer, batch["labels"], "en", 3, sampling, 1.0, [6, 6, 6], False, 0, hidden)
        loss = objective.loss(model, hidden, batch, True, False, lambda n: n, 5)
        loss.backward()
        return found, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared = step()
    shared_calls, calls[:] = list(calls), []
    monkeypatch.setattr(reward, "shared_cross_attention", lambda *args: contextlib.nullcontext())
    monkeypatch.setattr(reward, "_beam_cache", lambda: None)
    plain = step()
    assert shared_calls and set(shared_calls) == {3}  # each clip projected once, however many hypotheses it has
    assert max(calls) > 3
    assert shared[0] == plain[0]
    assert shared[1] == pytest.approx(plain[1], rel=1e-5)
    assert shared[2].keys() == plain[2].keys()
    for name, grad in shared[2].items():
        assert torch.allclose(grad, plain[2][name], rtol=1e-4, atol=1e-6), name


def test_a_beam_nbest_has_n_distinct_hypotheses_per_clip_each_with_its_prompt(model, tokenizer):
    hidden = _hidden(model, seed=5, clips=2)
    batch = _feedback_batch(tokenizer, ["ka tu", "ti ko ra"], [None, None])
    found = reward.nbest(model.eval(), tokenizer, batch["labels"], "en", 3, "beam", 1.0, [6, 6], False, 0, hidden)
    assert found.owner == [0, 0, 0, 1, 1, 1]
    pairs = list(zip(found.owner, map(tuple, found.text_ids), strict=True))
    assert len(set(pairs)) == len(pairs)
    assert all(seq[:PROMPT_TOKENS] == _start(tokenizer) for seq in found.sequences)
    assert all(len(ids) <= 6 for ids in found.text_ids)


def test_feedback_rows_read_corrections_as_references_and_ratings_as_weights(tmp_path):
    rows = [{"audio": "a.wav", "hypothesis": "the patient", "correction": "the patient's"},
            {"audio": "b.wav", "hypothesis": "was given", "rating": -0.5},
            {"audio": "c.wav", "hypothesis": "x", "rating": 2},
            {"audio": "d.wav", "text": "plain", "hypothesis": "ignored", "rating": 1},
            {"audio": "e.wav", "hypothesis": "not judged yet"}]
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = sources.read_all(path)
    assert [(r["text"], r["rating"]) for r in read[:2]] == [("the patient's", None), ("was given", -0.5)]
    assert read[2]["error"] == "missing_keys" and "rating is 2" in read[2]["error_detail"]
    assert (read[3]["text"], read[3]["rating"]) == ("plain", None)  # a reference wins over a rating
    assert read[4]["error"] == "missing_keys" and "neither correction nor rating" in read[4]["error_detail"]


def test_feedback_config_trains_on_the_file_or_mixes_it_in_and_errors_name_the_field():
    alone = config.from_dict({"data": {"feedback": "fb.jsonl"}})
    assert alone.data.train == "fb.jsonl" and alone.data.mixes() == []
    beside = config.from_dict({"data": {"train": "t.jsonl", "feedback": "fb.jsonl"}})
    assert beside.data.mixes() == [{"manifest": "fb.jsonl", "weight": 1.0}]
    for override, says in [("train.objective=rl", "train.objective"), ("train.mwer.n_best=1", "train.mwer.n_best"),
                           ("train.mwer.sampling=top", "train.mwer.sampling"), ("train.reward.loop=-1", "train.reward.loop")]:
        with pytest.raises(ConfigError, match=says):
            config.from_dict({}, [override])


def test_feedback_command_writes_rows_a_person_corrects_and_training_reads_back(tiny_model, tmp_path, capsys):
    from audio_fixtures import write_clip

    from ray_asr.cli import main

    rows = [{"audio": write_clip(tmp_path / f"c{i}.wav", 1.0 + i).name, "text": t} for i, t in enumerate(("ka tu", "ti"))]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "fb" / "feedback.jsonl"
    assert main(["feedback", str(tiny_model), str(manifest), "--out", str(out), "--with-reference"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["audio"]).name for r in written] == ["c0.wav", "c1.wav"]
    assert [r["correction"] for r in written] == ["ka tu", "ti"] and all(isinstance(r["hypothesis"], str) for r in written)
    assert [r["text"] for r in sources.read_all(out)] == ["ka tu", "ti"]  # corrections train as references
    assert "give each a `correction` or a `rating` (-1 .. 1), or delete it" in capsys.readouterr().out
    # Audio files: hypotheses only, for a person to judge; --with-reference has nothing to take.
    plain = tmp_path / "plain.jsonl"
    assert main(["feedback", str(tiny_model), str(tmp_path / "c0.wav"), "--out", str(plain)]) == 0
    assert set(json.loads(plain.read_text())) == {"audio", "hypothesis"}
    assert main(["feedback", str(tiny_model), str(tmp_path / "c0.wav"), "--out", str(plain), "--with-reference"]) == 2


def test_an_evaluation_tally_gives_the_mean_reward_and_the_nbest_oracle_wer(tokenizer):
    encode = lambda text: _ids(tokenizer, text)
    tally = reward.Tally()
    # Clip 0: greedy "a x" against "a b" (1 error of 2, cost 0.5); its N-best holds the exact "a b" (oracle 0).
    # Clip 1: greedy "c" never stopped (1 error of 2 words + runaway: cost 1.5); its N-best does no better.
    hyps = reward.NBest([[], [], []], [encode("a b"), encode("a x"), encode("c d e f")], [True, True, True], [0, 0, 1])
    tally.add(tokenizer, WEIGHTS, "en", ["a b", "c d"], [encode("a x"), encode("c")], [False, True], hyps)
    merged = reward.Tally.merged([tally, reward.Tally()])  # another rank with no clips changes nothing
    assert merged["reward"] == pytest.approx(-(0.5 + 1.5) / 2)
    assert merged["oracle_wer"] == pytest.approx((0 + 1) / 4)


def test_the_eval_line_shows_reward_and_oracle_wer_under_mwer():
    from ray_asr.train import _eval_line

    row = {"step": 4, "epoch": 1, "train_loss": 1.0, "train_clips_per_s": 2.0, "wer": 0.25, "cer": 0.1,
           "runaway_outputs": 0, "eval_loss": 0.9, "num_utterances": 4, "reward": -0.3, "oracle_wer": 0.125,
           "eval_seconds": 3.0}
    assert "eval loss 0.900 WER 25.00% CER 10.00% runaway 0 reward -0.300 N-best oracle WER 12.50%" in _eval_line(row)
