"""Growing the starting model before a run: added layers, domain terms as whole tokens, a new language.

A run that asks for growth (`train.add_layers`, `model.add_tokens`, `model.new_language`) first writes
the grown model as an ordinary Whisper folder, `<output_dir>/base-model/`, and trains from it: the data
tier, the trainers, evaluation and export all read its tokenizer and weights like any other model's, and
the export is a standard Whisper checkpoint (`decoder_layers` raised, vocabulary grown) that
`from_pretrained` and CTranslate2's converter take as it is. `growth.json` beside the weights says what
is new, for the strategies that train only that (`add_layers`, `head`).

Growth keeps the model's outputs unchanged at step 0:
- an added layer's attention and MLP output projections start at zero, so the block is the identity
  through its residual connections (its other weights start as the layer below's: a trained scale for
  the gradients that reach them once the projections move off zero);
- a domain term's embedding row starts as the mean of the rows of the pieces it was split into, and a
  new language's as a named language's row; neither is emitted by the base model, whose logits over the
  old vocabulary are untouched.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ray_asr.config import Config, ConfigError

GROWTH_FILE = "growth.json"
GROWN_FOLDER = "base-model"


@dataclass
class Growth:
    """What a grown model added to its base (read from `growth.json`; empty for an ordinary model)."""

    added_decoder_layers: list = field(default_factory=list)
    """Indices of the decoder layers that are new."""
    added_encoder_layers: list = field(default_factory=list)
    """Indices of the encoder layers that are new."""
    first_new_token: int | None = None
    """Rows of the token embedding from this id on are new (added terms and language tokens)."""
    new_language: str | None = None
    """Code of the language token that is new, if any."""
    base: str = ""
    """The model it grew from."""

    @classmethod
    def of(cls, model_dir: str | Path) -> Growth:
        path = Path(model_dir) / GROWTH_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def added_layers(self, whisper) -> list:
        """The new layer modules of a `WhisperModel` (or anything with `.encoder` and `.decoder`)."""
        return ([whisper.decoder.layers[i] for i in self.added_decoder_layers]
                + [whisper.encoder.layers[i] for i in self.added_encoder_layers])


def requested(cfg: Config) -> bool:
    """Whether the config asks for any growth of the starting model."""
    added = cfg.train.add_layers
    return bool(added.get("decoder") or added.get("encoder") or cfg.model.add_tokens or cfg.model.new_language)


def materialise(cfg: Config) -> Config:
    """The config a run uses: unchanged without growth; else the grown model written (once, or again when the
    request changed) to `<output_dir>/base-model` and named as the starting model, with the growth keys
    cleared so that no later step grows it again."""
    if not requested(cfg):
        return cfg
    out = Path(cfg.output_dir) / GROWN_FOLDER
    key = _request_key(cfg)
    stamp = out / ".request"
    if not (stamp.is_file() and stamp.read_text() == key and (out / "config.json").is_file()):
        stage = out.parent / f".{out.name}.partial"
        shutil.rmtree(stage, ignore_errors=True)
        build(cfg, stage)
        (stage / ".request").write_text(key)
        shutil.rmtree(out, ignore_errors=True)
        stage.rename(out)
    grown = copy.deepcopy(cfg)
    grown.model = dataclasses.replace(cfg.model, name_or_path=str(out), add_tokens=[], new_language=None)
    grown.train = dataclasses.replace(cfg.train, add_layers={})
    return grown


def _request_key(cfg: Config) -> str:
    base = Path(cfg.model.name_or_path)
    weights = next((base / n for n in ("model.safetensors", "pytorch_model.bin") if (base / n).is_file()), None)
    stamp = (str(base.resolve()), weights.stat().st_mtime_ns if weights else 0, cfg.train.add_layers,
             cfg.model.add_tokens, cfg.model.new_language, cfg.train.seed)
    return hashlib.sha256(json.dumps(stamp, sort_keys=True, default=str).encode()).hexdigest()


def check(cfg: Config) -> None:
    """Growth the base model cannot take, or a growth-only strategy with nothing grown, named in one line before
    anything is written."""
    known = Growth.of(cfg.model.name_or_path) if Path(cfg.model.name_or_path).is_dir() else Growth()
    added = cfg.train.add_layers
    if cfg.train.strategy == "add_layers" and not (added.get("decoder") or added.get("encoder")
                                                  or known.added_decoder_layers or known.added_encoder_layers):
        raise ConfigError("train.strategy: add_layers trains only the layers it adds; set train.add_layers: "
                          "{decoder: 2} (or another count)")
    if cfg.train.strategy == "head" and not (cfg.model.add_tokens or cfg.model.new_language
                                             or known.first_new_token is not None):
        raise ConfigError("train.strategy: head trains only new token rows; set model.add_tokens or "
                          "model.new_language")
    spec = cfg.model.new_language
    if spec:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        if spec["code"] in LANGUAGES:
            raise ConfigError(f"model.new_language.code: {spec['code']} is already one of Whisper's languages; "
                              "set model.language to it instead")
        if spec.get("from", "en") not in LANGUAGES:
            raise ConfigError(f"model.new_language.from: {spec.get('from')!r} is not one of Whisper's language codes")


def build(cfg: Config, out: str | Path) -> Path:
    """Writes the grown model of `cfg` to `out` (model, tokenizer, feature extractor, generation config,
    growth.json) and returns `out`."""
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from ray_asr import model as model_lib

    out = Path(out)
    base = cfg.model.name_or_path
    model = model_lib.load(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    growth = Growth(base=str(base))
    torch.manual_seed(cfg.train.seed)
    added = cfg.train.add_layers
    growth.added_decoder_layers = add_layers(model, "decoder", int(added.get("decoder", 0)))
    growth.added_encoder_layers = add_layers(model, "encoder", int(added.get("encoder", 0)))
    if cfg.model.add_tokens or cfg.model.new_language:
        growth.first_new_token = add_tokens(model, tokenizer, cfg.model.add_tokens, cfg.model.new_language)
        growth.new_language = (cfg.model.new_language or {}).get("code")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor.from_pretrained(base).save_pretrained(out)
    (out / GROWTH_FILE).write_text(json.dumps(dataclasses.asdict(growth), indent=1))
    return out


def add_layers(model, side: str, count: int) -> list[int]:
    """Stacks `count` new layers on top of the `side` (`encoder` or `decoder`) stack of a
    `WhisperForConditionalGeneration`, each the identity at first; returns their indices."""
    if count <= 0:
        return []
    stack = getattr(model.model, side)
    top = stack.layers[-1]
    first = len(stack.layers)
    for i in range(first, first + count):
        layer = copy.deepcopy(top)
        for name, module in layer.named_modules():
            # The projections whose outputs join the residual stream: zero, so the block adds nothing.
            if name.endswith(("self_attn.out_proj", "encoder_attn.out_proj")) or name == "fc2":
                module.weight.data.zero_()
                if module.bias is not None:
                    module.bias.data.zero_()
        for module in layer.modules():  # attention reads its layer's index for the KV cache
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
        stack.layers.append(layer)
    setattr(model.config, f"{side}_layers", len(stack.layers))
    return list(range(first, first + count))


def add_tokens(model, tokenizer, terms: list[str], new_language: dict | None) -> int:
    """Adds `terms` as whole tokens (each in its word-initial form, ` term`, as Whisper's byte-level BPE sees
    a word inside a sentence, and as written) and the new language's `<|xx|>` token; resizes the (tied)
    embedding and output projection; returns the first new id."""
    import torch
    from tokenizers import AddedToken

    first = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) != first:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens and the embedding {first} rows; "
                         "cannot add tokens to a model whose vocabulary is already padded")
    embed = model.get_input_embeddings().weight.data.clone()
    pieces = {}
    for term in terms:
        for form in (f" {term}", term):
            if form not in pieces and tokenizer.convert_tokens_to_ids(form) in (None, tokenizer.unk_token_id):
                pieces[form] = tokenizer(form, add_special_tokens=False).input_ids
    tokenizer.add_tokens([AddedToken(form, normalized=False) for form in pieces])
    if new_language:
        code = new_language["code"]
        tokenizer.add_special_tokens({"additional_special_tokens": [f"<|{code}|>"]},
                                     replace_extra_special_tokens=False)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = model.get_input_embeddings().weight.data
    with torch.no_grad():
        for form, ids in pieces.items():
            weight[tokenizer.convert_tokens_to_ids(form)] = embed[ids].mean(dim=0)
        if new_language:
            source = tokenizer.convert_tokens_to_ids(f"<|{new_language.get('from', 'en')}|>")
            new_id = tokenizer.convert_tokens_to_ids(f"<|{new_language['code']}|>")
            weight[new_id] = embed[source]
            gen = model.generation_config
            gen.lang_to_id = {**(gen.lang_to_id or {}), f"<|{new_language['code']}|>": new_id}
    model.config.vocab_size = len(tokenizer)
    return first
