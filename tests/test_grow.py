"""Growing the starting model (`ray_asr.grow`): added layers start as the identity and train alone; domain
terms become single tokens whose new rows alone train under `head`; a new language token is accepted by
generation; exports reload with `from_pretrained` and convert to CTranslate2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, WhisperForConditionalGeneration

from ray_asr import config, export, grow, labels
from ray_asr import model as model_lib
from ray_asr.config import ConfigError

TERMS = ["metoprolol", "apixaban"]


def _cfg(tiny_model, tmp_path, **keys) -> config.Config:
    values = {"model": {"name_or_path": str(tiny_model)}, "output_dir": str(tmp_path / "run"),
              "data": {"train": "unused.jsonl"}}
    for dotted, value in keys.items():
        section, key = dotted.split("__")
        values.setdefault(section, {})[key] = value
    return config.from_dict(values)


def _inputs(model, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, model.config.num_mel_bins, 3000, generator=g)
    tokens = torch.randint(0, 200, (2, 7), generator=g)
    return {"input_features": features, "decoder_input_ids": tokens}


def _logits(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _one_step(model, inputs, lr: float = 1e-2) -> None:
    """One AdamW step on a next-token loss (what the trainer's optimizer does to the parameters that train)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    labels_ = inputs["decoder_input_ids"]
    loss = model(input_features=inputs["input_features"], labels=labels_).loss
    loss.backward()
    opt.step()


@pytest.fixture(scope="module")
def layered(tiny_model, tmp_path_factory):
    """The tiny model grown by two decoder layers and one encoder layer, trained by `add_layers`."""
    tmp = tmp_path_factory.mktemp("grown-layers")
    cfg = _cfg(tiny_model, tmp, train__add_layers={"decoder": 2, "encoder": 1}, train__strategy="add_layers")
    return cfg, grow.materialise(cfg)


def test_added_layers_leave_logits_unchanged_then_train_alone(tiny_model, layered):
    _, grown_cfg = layered
    base = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    grown = model_lib.apply_strategy(model_lib.load(grown_cfg.model.name_or_path), grown_cfg.train)
    assert grown.config.decoder_layers == base.config.decoder_layers + 2
    assert grown.config.encoder_layers == base.config.encoder_layers + 1
    inputs = _inputs(base)
    torch.testing.assert_close(_logits(grown, inputs), _logits(base, inputs), atol=1e-5, rtol=0)

    growth = grow.Growth.of(grown_cfg.model.name_or_path)
    assert growth.added_decoder_layers == [2, 3] and growth.added_encoder_layers == [2]
    new = {f"model.decoder.layers.{i}." for i in (2, 3)} | {"model.encoder.layers.2."}
    trainable = {n for n, p in grown.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(tuple(new)) for n in trainable)
    before = {n: p.detach().clone() for n, p in grown.named_parameters()}
    _one_step(grown, inputs)
    changed = {n for n, p in grown.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert not torch.allclose(_logits(grown, inputs), _logits(base, inputs), atol=1e-5)


def test_added_layers_export_reloads_with_raised_counts_and_same_logits(layered, tmp_path):
    _, grown_cfg = layered
    trained = model_lib.apply_strategy(model_lib.load(grown_cfg.model.name_or_path), grown_cfg.train)
    inputs = _inputs(trained, seed=1)
    _one_step(trained, inputs)
    state = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}
    out = export.write(grown_cfg, state, tmp_path / "model")
    reloaded = WhisperForConditionalGeneration.from_pretrained(out)
    assert reloaded.config.decoder_layers == 4 and reloaded.config.encoder_layers == 3
    torch.testing.assert_close(_logits(reloaded, inputs), _logits(trained, inputs), atol=1e-5, rtol=0)
    ct2 = export.export(out, "ct2", tmp_path / "ct2")
    assert (ct2 / "model.bin").is_file()
    import ctranslate2

    whisper = ctranslate2.models.Whisper(str(ct2), device="cpu", intra_threads=1)
    features = ctranslate2.StorageView.from_array(inputs["input_features"][:1].numpy())
    prompt = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    # The raised encoder runs in CTranslate2 as in torch, and so does the raised decoder's first step.
    encoded = torch.from_numpy(np.asarray(whisper.encode(features)))
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoded, trained.model.encoder(inputs["input_features"][:1]).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)
        logits = trained(input_features=inputs["input_features"][:1], decoder_input_ids=torch.tensor([prompt])).logits
    eot = trained.config.eos_token_id
    logits[0, -1, eot] = -float("inf")  # suppressed at the first step (the generation config's begin suppression)
    theirs = whisper.generate(features, [prompt], max_length=16, beam_size=1)[0].sequences_ids[0]
    assert theirs[0] == int(logits[0, -1].argmax())


@pytest.fixture(scope="module")
def headed(tiny_model, tmp_path_factory):
    """The tiny model with two domain terms and a new language `xx`, trained by `head`."""
    tmp = tmp_path_factory.mktemp("grown-tokens")
    cfg = _cfg(tiny_model, tmp, model__add_tokens=TERMS, model__new_language={"code": "xx", "from": "en"},
               train__strategy="head")
    return cfg, grow.materialise(cfg)


def test_added_terms_are_single_tokens_and_head_trains_only_new_rows(tiny_model, headed):
    _, grown_cfg = headed
    folder = grown_cfg.model.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base_len = len(AutoTokenizer.from_pretrained(tiny_model))
    for term in TERMS:
        assert len(tokenizer(f" {term}", add_special_tokens=False).input_ids) == 1
        assert len(tokenizer(f"take {term} daily", add_special_tokens=False).input_ids) < len(
            AutoTokenizer.from_pretrained(tiny_model)(f"take {term} daily", add_special_tokens=False).input_ids)
    label = labels.load_tokenizer(folder, "en", "transcribe")  # what the data tier encodes labels with
    assert len(label.backend.encode(f" {TERMS[0]}", add_special_tokens=False).ids) == 1

    model = model_lib.apply_strategy(model_lib.load(folder), grown_cfg.train)
    first = grow.Growth.of(folder).first_new_token
    assert first == base_len and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = _inputs(model)
    inputs["decoder_input_ids"][:, 3] = first  # the new rows must be in the batch to get a gradient
    _one_step(model, inputs)
    embed = model.get_input_embeddings().weight
    assert torch.equal(embed[:first], before["model.decoder.embed_tokens.weight"][:first])
    assert not torch.equal(embed[first:], before["model.decoder.embed_tokens.weight"][first:])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.decoder.embed_tokens.weight"}


def test_new_language_token_is_generated_and_exported(tiny_model, headed, tmp_path):
    _, grown_cfg = headed
    folder = grown_cfg.model.name_or_path
    model = model_lib.load(folder)
    xx = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|xx|>")
    assert model.generation_config.lang_to_id["<|xx|>"] == xx
    assert labels.load_tokenizer(folder, "xx", "transcribe").prefix[0] == xx
    features = _inputs(model)["input_features"][:1]
    out = model.generate(input_features=features, language=labels.generation_language("xx"), max_new_tokens=3,
                         return_dict_in_generate=True).sequences
    assert out[0, 1].item() == xx  # <|startoftranscript|><|xx|>...
    base = model_lib.load(str(tiny_model))
    assert base.get_input_embeddings().weight.shape[0] <= xx  # the base model has no row to emit it with

    trained = dataclass_language(grown_cfg, "xx")
    state = {n: p.detach().clone() for n, p in model_lib.apply_strategy(model_lib.load(folder), trained.train)
             .named_parameters() if p.requires_grad}
    out_dir = export.write(trained, state, tmp_path / "model")
    generation = json.loads((out_dir / "generation_config.json").read_text())
    assert generation["lang_to_id"]["<|xx|>"] == xx
    ct2 = export.export(out_dir, "ct2", tmp_path / "ct2")  # the grown vocabulary converts as it is
    assert json.loads((ct2 / "config.json").read_text())["lang_ids"][-1] == xx
    reloaded = WhisperForConditionalGeneration.from_pretrained(out_dir)
    again = reloaded.generate(input_features=features, max_new_tokens=3,  # the exported default: <|xx|>
                              return_dict_in_generate=True).sequences
    assert again[0, 1].item() == xx


def dataclass_language(cfg: config.Config, code: str) -> config.Config:
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, language=code))


def test_growth_is_written_once_and_cleared_from_the_run_config(tiny_model, headed):
    cfg, grown_cfg = headed
    assert grown_cfg.model.add_tokens == [] and grown_cfg.model.new_language is None
    stamp = (grow.Path(grown_cfg.model.name_or_path) / "config.json").stat().st_mtime_ns
    assert grow.materialise(cfg).model.name_or_path == grown_cfg.model.name_or_path
    assert (grow.Path(grown_cfg.model.name_or_path) / "config.json").stat().st_mtime_ns == stamp
    assert grow.materialise(grown_cfg) is grown_cfg  # nothing left to grow


@pytest.mark.parametrize("keys, field", [
    ({"train__strategy": "add_layers"}, "train.strategy"),
    ({"train__strategy": "head"}, "train.strategy"),
    ({"model__new_language": {"code": "de"}}, "model.new_language.code"),
    ({"model__new_language": {"code": "xx", "from": "zz"}}, "model.new_language.from"),
])
def test_growth_that_cannot_work_is_one_line_naming_the_field(tiny_model, tmp_path, keys, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        grow.check(_cfg(tiny_model, tmp_path, **keys))


@pytest.mark.parametrize("keys, field", [
    ({"train__add_layers": {"decoder": -1}}, "train.add_layers"),
    ({"train__add_layers": {"middle": 1}}, "train.add_layers"),
    ({"model__add_tokens": [" spaced "]}, "model.add_tokens"),
    ({"model__new_language": {"code": "XX1"}}, "model.new_language.code"),
    ({"train__strategy": "head", "train__weight_decay": 0.1}, "train.weight_decay"),
    ({"train__early_stopping": {"patience": 0}}, "train.early_stopping.patience"),
])
def test_bad_growth_keys_name_the_field(tiny_model, tmp_path, keys, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _cfg(tiny_model, tmp_path, **keys)
