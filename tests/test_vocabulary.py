"""Custom vocabulary: prompts at inference reach the decoder; in training they sit before the labels, masked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_asr import collate, config, evaluate, labels, vocabulary
from ray_asr.collate import IGNORE_INDEX, PromptMaker

SPEECH = Path(__file__).parent / "data" / "speech"
TERMS = ["metoprolol", "warfarin", "apixaban", "ceftriaxone", "gabapentin"]


def test_terms_file_skips_blanks_comments_and_repeats(tmp_path):
    path = tmp_path / "terms.txt"
    path.write_text("# drugs\nmetoprolol\n\n  warfarin  # anticoagulant\nmetoprolol\n")
    assert vocabulary.read_terms(path) == ["metoprolol", "warfarin"]
    assert vocabulary.prompt_text(None, path) == "metoprolol, warfarin"
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt holds no terms"):
        vocabulary.read_terms(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="not both"):
        vocabulary.prompt_text("x", path)


@settings(max_examples=50, deadline=None)
@given(said=st.lists(st.sampled_from(TERMS), unique=True), seed=st.integers(0, 2**32 - 1),
       distractors=st.integers(0, 4))
def test_a_training_prompt_holds_every_term_said_and_some_not_said(said, seed, distractors):
    text = "Give " + " and ".join(said) + " today." if said else "Nothing to give today."
    prompt = vocabulary.training_prompt(TERMS, text, np.random.default_rng(seed), distractors)
    terms = prompt.split(vocabulary.SEPARATOR) if prompt else []
    assert set(said) <= set(terms) and len(terms) == len(set(terms))
    assert len(set(terms) - set(said)) == min(distractors, len(TERMS) - len(said))


def test_term_recall_counts_terms_said_and_heard():
    rows = [{"reference": "Give warfarin now.", "hypothesis": "give warfarin now"},
            {"reference": "Stop apixaban and warfarin.", "hypothesis": "stop a pixaban and warfarin"},
            {"reference": "Nothing here.", "hypothesis": "nothing here"}]
    assert vocabulary.term_recall(TERMS, rows) == pytest.approx(2 / 3)
    assert vocabulary.term_recall(TERMS, rows[2:]) is None


def test_an_evaluation_prompt_reaches_generate_and_is_cut_from_the_hypothesis(tiny_model, monkeypatch):
    scorer = evaluate.Scorer(str(tiny_model))
    clips, _ = evaluate.read_clips(str(SPEECH / "manifest.jsonl"), scorer.tokenizer)
    seen = []
    original = scorer.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("prompt_ids"))
        return original(*args, **kwargs)

    monkeypatch.setattr(scorer.model, "generate", spy)
    plain = scorer.rows(clips[:2])
    prompted = scorer.rows(clips[:2], prompt="metoprolol, warfarin")
    backend = scorer.tokenizer.backend
    assert seen[0] is None
    assert seen[1].tolist() == vocabulary.prompt_ids(backend, "metoprolol, warfarin")
    for row in plain + prompted:  # the prompt's text never leaks into what is scored
        assert "metoprolol, warfarin" not in row["hypothesis"]


@pytest.fixture()
def maker(tiny_model):
    tokenizer = labels.load_tokenizer(str(tiny_model), "en", "transcribe")
    return PromptMaker(TERMS, p=1.0, distractors=2, tokenizer=tokenizer, start_id=tokenizer.backend.token_to_id(
        "<|startoftranscript|>")), tokenizer


def test_prompted_labels_mask_the_prompt_and_decoder_inputs_carry_it(maker):
    make, tokenizer = maker
    texts = ["Give warfarin now.", "Hello there."]
    label_lists = [labels.encode(tokenizer, text) for text in texts]
    inputs, targets = make(label_lists, texts, np.random.default_rng(0))
    startofprev = tokenizer.backend.token_to_id("<|startofprev|>")
    for row, (ids, text) in enumerate(zip(label_lists, texts, strict=True)):
        assert targets[row][targets[row] != IGNORE_INDEX].tolist() == ids  # the transcript alone is scored
        first = targets[row].tolist().index(ids[0])  # where the transcript starts: everything before is masked
        assert inputs[row, 0] == startofprev and inputs[row, first] == make.start_id
        prompt = tokenizer.backend.decode(inputs[row, 1:first].tolist()).strip().split(vocabulary.SEPARATOR)
        assert ("warfarin" in prompt) == ("warfarin" in text) and len(prompt) == 2 + ("warfarin" in text)
        # Teacher forcing: each input after the start token is the previous scored target.
        assert inputs[row, first + 1 : first + len(ids)].tolist() == ids[:-1]


def test_without_prompts_the_collator_gives_whispers_own_shift(maker):
    make, tokenizer = maker
    texts = ["Give warfarin now."]
    ids = labels.encode(tokenizer, texts[0])
    none = PromptMaker(TERMS, p=0.0, distractors=2, tokenizer=tokenizer, start_id=make.start_id)
    inputs, targets = none([ids], texts, np.random.default_rng(0))
    assert targets[0].tolist() == ids and inputs[0].tolist() == [make.start_id, *ids[:-1]]


def test_the_loss_of_a_prompted_batch_is_the_transcripts_alone(tiny_model, maker):
    """Masking works end to end: the model's loss with a prompt is over exactly the transcript's tokens."""
    from ray_asr.model import load

    make, tokenizer = maker
    model = load(str(tiny_model)).eval()
    texts = ["Give warfarin now."]
    ids = labels.encode(tokenizer, texts[0])
    inputs, targets = make([ids], texts, np.random.default_rng(1))
    features = torch.zeros(1, model.config.num_mel_bins, 3000)
    with torch.no_grad():
        out = model(input_features=features, decoder_input_ids=inputs, labels=targets)
    logits = out.logits[0][targets[0] != IGNORE_INDEX]
    manual = torch.nn.functional.cross_entropy(logits, torch.tensor(ids))
    assert torch.allclose(out.loss, manual, atol=1e-5)
    assert (targets[0] == IGNORE_INDEX).sum() == len(inputs[0]) - len(ids)  # every prompt position masked


def test_the_training_collator_prompts_and_evaluation_never_does(tiny_model, maker):
    from ray_asr.audio import load, to_wire

    make, tokenizer = maker
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()[:2]]
    batch = {"audio": np.array([to_wire(load(SPEECH / r["audio"]), "int16") for r in rows], dtype=object),
             "labels": np.array([labels.encode(tokenizer, r["text"]) for r in rows], dtype=object),
             "text": np.array([r["text"] for r in rows]), "id": np.array(["a", "b"])}
    train, plain = collate.for_splits(80, "int16", "cpu", None, 0, prompts=make)
    assert "decoder_input_ids" in train(batch) and "decoder_input_ids" not in plain(batch)


@pytest.mark.parametrize(("value", "says"), [
    ({"p": 0.5}, "train.prompt_vocabulary: must be {file"),
    ({"file": "none.txt"}, "train.prompt_vocabulary.file: must be a file"),
    ({"file": "configs/recipes/medications.txt", "p": 2}, "train.prompt_vocabulary.p: must be in [0, 1]"),
    ({"file": "configs/recipes/medications.txt", "q": 1}, "train.prompt_vocabulary.q: unknown key"),
])
def test_prompt_vocabulary_config_errors_name_the_key(value, says):
    with pytest.raises(config.ConfigError, match=says.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")):
        config.from_dict({"train": {"prompt_vocabulary": value}})


def test_the_recipe_terms_are_the_demo_corpus_drugs():
    from ray_asr.demo_corpus import DRUGS

    assert vocabulary.read_terms("configs/recipes/medications.txt") == list(DRUGS)


def test_workers_get_the_terms_file_as_an_absolute_path():
    """A Ray Train worker does not share the driver's working directory."""
    from ray_asr import finetune

    cfg = config.from_dict({"train": {"prompt_vocabulary": {"file": "configs/recipes/medications.txt", "p": 0.5}}})
    spec = finetune.absolute_paths(config.to_dict(cfg))["train"]["prompt_vocabulary"]
    assert Path(spec["file"]).is_absolute() and Path(spec["file"]).is_file() and spec["p"] == 0.5
