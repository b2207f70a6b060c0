"""The exported model, and `ray-asr export`: a run's model in the form a serving stack loads.

Training writes its model (`output_dir/model/`) as the base weights with the trained parameters' fp32
master values put back: frozen parameters come from the base model's own files, untouched by bf16
training; trainable ones from DeepSpeed's fp32 master copies, gathered across ranks under ZeRO-1..3.
LoRA adapters are merged. The folder loads offline with `WhisperForConditionalGeneration.from_pretrained`
and `WhisperProcessor.from_pretrained`: safetensors weights, tokenizer, feature extractor, and a
generation config carrying the language and task.

`export` hands that model on without the run around it: as a plain HF folder for transformers-based
serving, or as a CTranslate2 folder for faster-whisper, which decodes several times faster on CPU and
GPU. CTranslate2's own converter writes the weights, so the layout follows whatever CTranslate2 version
is installed rather than a copy of it kept here. An export first fills a sibling folder and only then
replaces `out`, so a failed export leaves the previous one in place.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ray_asr import model as model_lib
from ray_asr.config import Config
from ray_asr.labels import generation_language

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def trainable_state(engine) -> dict[str, torch.Tensor]:
    """fp32 values of every trainable parameter, by name (collective under ZeRO-3: every rank calls it)."""
    from ray_asr.zero import fp32_master, unfused_masters

    state, unfused = {}, unfused_masters(engine)
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        full = fp32_master(param, unfused)
        state[name] = (full if full is not None else param.data).detach().float().cpu().clone()
    return state


def _trained(cfg: Config, trainable: dict[str, torch.Tensor]):
    """The base model, shaped by the strategy (a peft model for LoRA), with `trainable` loaded into it."""
    model = model_lib.apply_strategy(model_lib.load(cfg.model.name_or_path), cfg.train)
    missing = set(trainable) - {name for name, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"trained parameters unknown to the base model: {sorted(missing)[:3]}")
    model.load_state_dict(trainable, strict=False)
    return model


def write(cfg: Config, trainable: dict[str, torch.Tensor], out: Path, adapter_out: Path | None = None) -> Path:
    """Writes the export folder `out`: a plain fp32 Whisper with adapters merged (and, for LoRA, the
    unmerged adapter to `adapter_out`)."""
    from transformers import WhisperProcessor

    out = Path(out)
    model = _trained(cfg, trainable)
    if cfg.train.strategy == "lora":
        if adapter_out is not None:
            model.save_pretrained(adapter_out, safe_serialization=True)  # before merging folds it in
        model = model.merge_and_unload()
    model.generation_config.language = generation_language(cfg.model.language)
    model.generation_config.task = cfg.model.task
    model.save_pretrained(out, safe_serialization=True)
    WhisperProcessor.from_pretrained(cfg.model.name_or_path).save_pretrained(out)
    return out


# `--quantization` choices: the CTranslate2 weight types faster-whisper users pick from (int8 for CPU,
# float16 / int8_float16 for GPU, float32 as trained). Float32 is the default: the run's model is fp32.
CT2_QUANTIZATIONS = ("int8", "int8_float16", "float16", "float32")
# Weight types whose float tensors are stored as fp16 anyway: the converter may load the model in fp16,
# halving its peak memory (large-v3: ~6 GB → ~3 GB); rounding to fp16 first changes no stored fp16 value
# and moves an int8 scale by at most half an fp16 ulp, far below an int8 step.
_FLOAT16_STORED = frozenset({"float16", "int8_float16"})
# CPU int8 weights get 7 bits of range, not 8. CTranslate2's CPU int8 GEMM multiplies unsigned 8-bit
# activations by signed 8-bit weights, and without VNNI (AVX2, AVX-512 without VNNI) the instruction
# sums each pair of products into int16, which saturates: 2 × 255 × 127 = 64,770 > 32,767, while
# 2 × 255 × 63 = 32,130 fits. Measured on the demo eval split with a fine-tuned whisper-base (AMD EPYC,
# AVX2, greedy): 8-bit weights 22.77% WER against float32's 19.64%; 7-bit weights 19.64%. GPU int8
# (int8_float16) accumulates in int32 and keeps the full range.
_CPU_INT8 = frozenset({"int8"})
INT8_CPU_RANGE = 63  # 2**6 - 1: the largest |weight| step whose pair sums fit in int16
# What faster-whisper reads beside model.bin: the tokenizer (without tokenizer.json it downloads
# openai/whisper-tiny's from the hub: wrong for a custom vocabulary and impossible offline) and the
# feature extractor settings (n_mels: 128 for large-v3, else 80), flat in preprocessor_config.json.
_TOKENIZER_FILE, _FEATURES_FILE = "tokenizer.json", "preprocessor_config.json"
# transformers 5 saves a processor's feature extractor nested in this file instead of _FEATURES_FILE
# (so a run's model/ written by `write` has no preprocessor_config.json); transformers 4 reads only the latter.
_PROCESSOR_FILE = "processor_config.json"
# File names `from_pretrained` looks for, safetensors and pickle, single and sharded.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Each format's file that marks a folder as an earlier export of it, which `export` may replace.
_MARKER = {"hf": "config.json", "ct2": "model.bin"}


def model_dir(source: str | Path) -> Path:
    """The HF Whisper folder of `source`: a finetune output_dir's `model/`, or `source` itself."""
    source = Path(source)
    expected = "a finetune output_dir (holding model/) or a Whisper model folder (config.json, model.safetensors)"
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder; expected {expected}")
    folder = source / "model" if (source / "model" / "config.json").is_file() else source
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{source} is neither a finetune output_dir (no model/config.json) nor a Whisper "
                                "model folder (no config.json)")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{folder / 'config.json'} is not a model config ({err})") from None
    if model_type != "whisper":
        raise ValueError(f"{folder} holds a {model_type!r} model, not a Whisper model")
    missing = [what for what, names in (("weights", _WEIGHT_FILES), ("tokenizer", (_TOKENIZER_FILE, "vocab.json")),
                                        ("feature extractor", (_FEATURES_FILE, _PROCESSOR_FILE)))
               if not any((folder / name).is_file() for name in names)]
    if missing:
        raise FileNotFoundError(f"{folder} lacks its {', '.join(missing)}; expected a complete Whisper model folder")
    return folder


def export(source: str | Path, fmt: str, out: str | Path, quantization: str | None = None) -> Path:
    """Writes `source`'s model to `out` as an HF folder (`fmt="hf"`) or a CTranslate2 folder (`fmt="ct2"`,
    float32 unless `quantization` names another weight type); returns `out`."""
    if fmt not in _MARKER:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(_MARKER)}")
    if quantization is not None and fmt != "ct2":
        raise ValueError(f"--quantization {quantization} applies to --format ct2 only (an hf export keeps the weights as they are)")
    if quantization is not None and quantization not in CT2_QUANTIZATIONS:
        raise ValueError(f"--quantization {quantization!r}: expected one of {', '.join(CT2_QUANTIZATIONS)}")
    folder, out = model_dir(source), Path(out)
    if folder.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--out {out} holds the model being exported ({folder}); choose another folder")
    with _staged(out, _MARKER[fmt]) as stage, _quiet_transformers():
        if fmt == "hf":
            _write_hf(folder, stage)
        else:
            _write_ct2(folder, stage, quantization or "float32")
    return out


def _write_hf(folder: Path, out: Path) -> None:
    """A plain HF Whisper folder: reloaded and saved by transformers, which writes safetensors only."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    # Saving a loaded model, not copying files, turns a pickled pytorch_model.bin into safetensors and
    # proves the folder loads. The generation config (language, task) is saved with the model.
    _load_complete(WhisperForConditionalGeneration, folder).save_pretrained(out)
    processor = WhisperProcessor.from_pretrained(folder)
    processor.save_pretrained(out)
    processor.feature_extractor.save_pretrained(out)  # the flat preprocessor_config.json, for transformers 4.x


def _write_ct2(folder: Path, out: Path, quantization: str) -> None:
    """A CTranslate2 Whisper folder, with what faster-whisper reads beside it."""
    try:
        import ctranslate2
    except ImportError:
        raise ValueError("--format ct2 needs CTranslate2: pip install ctranslate2") from None

    class Converter(ctranslate2.converters.TransformersConverter):
        """CTranslate2's converter, refusing incomplete checkpoints and giving default alignment heads.

        With transformers 5 the converter (CTranslate2 4.8) runs unchanged: it loads with `dtype=`, v5's
        name, and reads language ids from the generation config's `lang_to_id`. Its one gap is here: it
        copies `generation_config.alignment_heads` whenever the attribute exists and falls back to the
        decoder's last half of layers only when it is None, so a config holding an empty list (tiny test
        models, configs rebuilt without OpenAI's heads) would write `alignment_heads: []`, and
        `Whisper.align` (faster-whisper's word timestamps) then fails on every call. `load_model` is the
        converter's hook between loading the model and reading it; `_load`, between reading it and
        writing it, is where CPU int8 weights get their reduced range (`INT8_CPU_RANGE`).
        """

        def load_model(self, model_class: type[PreTrainedModel], model_name_or_path: str, **kwargs) -> PreTrainedModel:
            model = _load_complete(model_class, model_name_or_path, **kwargs)
            if not getattr(model.generation_config, "alignment_heads", None):
                model.generation_config.alignment_heads = None
            return model

        def _load(self):
            spec = super()._load()
            if quantization in _CPU_INT8:
                spec._visit(_quantize_reduced_range)
            return spec

    present = [name for name in (_TOKENIZER_FILE, _FEATURES_FILE) if (folder / name).is_file()]
    converter = Converter(str(folder), copy_files=present, load_as_float16=quantization in _FLOAT16_STORED)
    # With the weights already int8 (`_load`), no quantization is asked of the converter: it leaves int8
    # variables as they are and every other tensor in float32, what "int8" means on a CPU.
    converter.convert(str(out), quantization=None if quantization in _CPU_INT8 else quantization,
                      force=True)  # force: `out` is our own empty stage
    # Side files the source lacks are derived from what it has.
    if _TOKENIZER_FILE not in present:  # a slow-tokenizer folder (vocab.json, merges.txt) from transformers 4.x
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(out / _TOKENIZER_FILE))
    if _FEATURES_FILE not in present:  # only processor_config.json, as transformers 5 saves a processor
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor.from_pretrained(folder).save_pretrained(out)


def _quantize_reduced_range(spec, name: str, value) -> None:
    """A `visit_spec` callback on the converter's spec before its validation (weights still torch tensors):
    each weight CTranslate2 would quantize (one with a `<name>_scale` sibling in its layer spec) becomes
    int8 with one scale per output row, at `INT8_CPU_RANGE` levels."""
    import numpy as np

    key = name.rsplit("/", 1)[-1]
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or not hasattr(spec, f"{key}_scale"):
        return
    weights = value.detach().to(torch.float32).cpu().numpy()
    rows = weights.reshape(weights.shape[0], -1)  # conv kernels (out, in, width) scale per output channel
    # A zero row keeps scale 1; a tiny one is held where its scale stays finite in float32.
    amax = np.abs(rows).max(axis=1)
    amax = np.maximum(np.where(amax > 0, amax, np.float32(1.0)), np.float32(INT8_CPU_RANGE) / np.finfo(np.float32).max)
    scale = (np.float32(INT8_CPU_RANGE) / amax).astype(np.float32)
    setattr(spec, key, np.rint(rows * scale[:, None]).astype(np.int8).reshape(weights.shape))
    setattr(spec, f"{key}_scale", scale)


def _load_complete(model_class: type[PreTrainedModel], folder: str | Path, **kwargs) -> PreTrainedModel:
    """`model_class.from_pretrained(folder)`, refusing a checkpoint that lacks weights.

    transformers fills missing or wrongly shaped weights with random values and only logs it; an export
    would then ship a partly random model that loads without complaint anywhere.
    """
    model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    absent = sorted(info["missing_keys"]) + sorted(str(key) for key in info["mismatched_keys"])
    if absent:
        raise ValueError(f"{folder} lacks weights for {len(absent)} parameters of {model_class.__name__} "
                         f"(e.g. {absent[0]}); refusing to export a partly random model")
    return model


@contextmanager
def _staged(out: Path, marker: str) -> Iterator[Path]:
    """An empty sibling folder of `out` to write into; it replaces `out` only once the block succeeds."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / marker).is_file()):
        raise ValueError(f"--out {out} exists and is not an earlier export (no {marker}); refusing to replace it")
    stage = out.parent / f".{out.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)  # left by an interrupted export
    stage.mkdir(parents=True)
    try:
        yield stage
        shutil.rmtree(out, ignore_errors=True)
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hides transformers' weight-loading progress bars for one export, then restores them.

    Its warnings stay: a load report is worth reading when an export looks wrong.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
