"""`ray-asr export`: a CTranslate2 export decodes shipped speech to the same tokens as the HF model it came
from; an HF export reloads with the same weights, safetensors only; bad sources and options are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.torch import load_file, save_file
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

from ray_asr.audio import load
from ray_asr.cli import main
from ray_asr.export import INT8_CPU_RANGE, _quantize_reduced_range, export, model_dir
from ray_asr.features import log_mel

SPEECH = Path(__file__).parent / "data" / "speech"
PROMPT = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
# Tokens compared per clip: enough that a wrong weight, position or cache shows as a different token.
NEW_TOKENS = 12
# CTranslate2 generates at most max_length // 2 new tokens (observed with 4.8; the prompt counts toward
# max_length in other versions): 64 leaves room for NEW_TOKENS either way, and the surplus is cut off.
CT2_MAX_LENGTH = 64
# CTranslate2's default of 4 threads on a loaded 2-core machine made a 0.5 s decode take 10 s; one is enough.
CT2_THREADS = 1
# Matrix weights scaled by this make the random tiny model's output depend on the audio and on the
# previous token (at scale 1 it repeats one token for every clip, which would compare little).
SHARPEN = 10.0


def _save_copy(model: WhisperForConditionalGeneration, source: Path, out: Path) -> Path:
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sharp_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with its matrices scaled up, so greedy decoding yields varied, audio-dependent tokens."""
    model = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.mul_(SHARPEN)
    return _save_copy(model, tiny_model, tmp_path_factory.mktemp("sharp-whisper"))


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """Log-mels of three shipped clips, `(3, 80, 3000)` float32."""
    audio = [torch.from_numpy(load(SPEECH / f"{i:02d}.flac")) for i in range(3)]
    return np.concatenate([log_mel(clip[None]).numpy() for clip in audio])


@pytest.fixture(scope="module")
def hf_tokens(sharp_model, features) -> list[list[int]]:
    """HF greedy decoding of the clips after PROMPT, end-of-text and padding removed."""
    model = WhisperForConditionalGeneration.from_pretrained(sharp_model).eval()
    prompt = WhisperProcessor.from_pretrained(sharp_model).tokenizer.convert_tokens_to_ids(PROMPT)
    with torch.no_grad():
        out = model.generate(torch.from_numpy(features), decoder_input_ids=torch.tensor([prompt] * len(features)),
                             max_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False)
    eot = model.generation_config.eos_token_id
    rows = []
    for row in out.tolist():
        row = row[len(prompt):] if row[: len(prompt)] == prompt else row
        rows.append(row[: row.index(eot)] if eot in row else row)
    return rows


def _ct2_tokens(folder: Path, features: np.ndarray) -> list[list[int]]:
    model = ctranslate2.models.Whisper(str(folder), intra_threads=CT2_THREADS)
    results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                             [PROMPT] * len(features), beam_size=1, max_length=CT2_MAX_LENGTH)
    return [result.sequences_ids[0][:NEW_TOKENS] for result in results]


def _run_dir(model: Path, root: Path) -> Path:
    """A finetune output_dir's layout around a copy of `model`."""
    shutil.copytree(model, root / "model")
    (root / "metrics.json").write_text("{}")
    return root


@pytest.mark.parametrize("layout,quantization", [("run", None), ("model", "float32")])
def test_ct2_export_decodes_like_the_hf_model(sharp_model, features, hf_tokens, tmp_path, layout, quantization):
    source = _run_dir(sharp_model, tmp_path / "run") if layout == "run" else sharp_model
    out = export(source, "ct2", tmp_path / "ct2", quantization)
    assert all(hf_tokens) and any(len(set(row)) > 1 for row in hf_tokens), f"a trivial comparison: {hf_tokens}"
    assert _ct2_tokens(out, features) == hf_tokens
    # What faster-whisper reads beside model.bin. The source, saved like a run's model/ by transformers 5, has
    # its feature extractor only nested in processor_config.json: the export writes the flat file.
    assert (out / "tokenizer.json").read_bytes() == (sharp_model / "tokenizer.json").read_bytes()
    assert not (sharp_model / "preprocessor_config.json").exists()
    expected = WhisperFeatureExtractor.from_pretrained(sharp_model).to_dict()
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == expected["feature_size"]
    assert WhisperFeatureExtractor.from_pretrained(out).to_dict() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ct2"] + (["run"] if layout == "run" else []))


def test_int8_export_loads_and_generates(tiny_model, features, tmp_path):
    out = export(tiny_model, "ct2", tmp_path / "int8", "int8")
    tokens = _ct2_tokens(out, features[:1])
    vocab = len(json.loads((out / "vocabulary.json").read_text()))
    assert tokens[0] and all(0 <= t < vocab for t in tokens[0])
    for name in ("tokenizer.json", "preprocessor_config.json"):  # copied as they are where the source has them
        assert (out / name).read_bytes() == (tiny_model / name).read_bytes()


def test_int8_export_stores_int8_weights(tiny_model, tmp_path):
    out = export(tiny_model, "ct2", tmp_path / "int8", "int8")
    # A model's default compute type is the type of its stored weights: float32 had they stayed float.
    assert ctranslate2.models.Whisper(str(out), intra_threads=CT2_THREADS).compute_type == "int8_float32"


class _Layer:
    """The part of a CTranslate2 layer spec the quantizer reads: a weight and its scale's placeholder."""

    def __init__(self, weight: torch.Tensor):
        self.weight, self.weight_scale = weight, "optional"


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, max_side=12),
                  elements=st.floats(-50, 50, width=32)))
def test_cpu_int8_weights_never_saturate_the_int16_pair_sums(weights):
    """Every weight is within INT8_CPU_RANGE, so a pair of u8 x s8 products fits int16 (no VNNI needed), and
    each row dequantizes to within half a step of the original."""
    layer = _Layer(torch.from_numpy(weights))
    _quantize_reduced_range(layer, "decoder/layer_0/ffn/linear_0/weight", layer.weight)
    q, scale = layer.weight, layer.weight_scale
    assert q.dtype == np.int8 and q.shape == weights.shape and scale.shape == (weights.shape[0],)
    assert np.abs(q.astype(np.int32)).max() <= INT8_CPU_RANGE and 2 * 255 * INT8_CPU_RANGE <= np.iinfo(np.int16).max
    rows, restored = weights.reshape(len(weights), -1), q.reshape(len(weights), -1) / scale[:, None]
    assert np.all(np.abs(restored - rows) <= 0.5 / scale[:, None] + 1e-6)


def test_quantizer_leaves_vectors_and_unscaled_weights_alone():
    unscaled = _Layer(torch.ones(4, 4))
    del unscaled.weight_scale  # a weight CTranslate2 keeps in float (position encodings)
    _quantize_reduced_range(unscaled, "encoder/position_encodings/weight", unscaled.weight)
    vector = _Layer(torch.ones(4))
    _quantize_reduced_range(vector, "encoder/layer_norm/weight", vector.weight)
    assert isinstance(unscaled.weight, torch.Tensor) and isinstance(vector.weight, torch.Tensor)
    assert vector.weight_scale == "optional"


def test_ct2_export_gets_alignment_heads_for_word_timestamps(tiny_model, features, tmp_path):
    """The tiny model's generation config has no alignment heads: the export gets CTranslate2's default ones,
    without which `align` (faster-whisper's word timestamps) fails."""
    out = export(tiny_model, "ct2", tmp_path / "ct2")
    assert json.loads((out / "config.json").read_text())["alignment_heads"]
    model = ctranslate2.models.Whisper(str(out), intra_threads=CT2_THREADS)
    tokenizer = WhisperProcessor.from_pretrained(tiny_model).tokenizer
    text = tokenizer.encode(" hello", add_special_tokens=False)
    [result] = model.align(ctranslate2.StorageView.from_array(features[:1]),
                           tokenizer.convert_tokens_to_ids(PROMPT[:1]), [text], [1500])
    assert len(result.alignments) > 0


def test_hf_export_round_trips_with_safetensors_only(tiny_model, tmp_path):
    out = export(_run_dir(tiny_model, tmp_path / "run"), "hf", tmp_path / "hf")
    exported = WhisperForConditionalGeneration.from_pretrained(out)
    WhisperProcessor.from_pretrained(out)
    source = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    assert exported.state_dict().keys() == source.state_dict().keys()
    for name, value in source.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name
    assert exported.generation_config.language == source.generation_config.language
    weights = {p.name for p in out.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".pkl"}}
    assert weights == {"model.safetensors"}
    assert (out / "preprocessor_config.json").is_file()  # transformers 4.x reads the feature extractor only there


def test_a_folder_that_is_neither_a_run_nor_a_model_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(FileNotFoundError, match="neither") as err:
        model_dir(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        export(tmp_path / "missing", "ct2", tmp_path / "out")


def test_quantization_with_hf_is_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="--quantization"):
        export(tiny_model, "hf", tmp_path / "hf", "int8")
    assert not (tmp_path / "hf").exists()


def test_an_out_folder_that_is_not_an_export_is_left_alone(tiny_model, tmp_path):
    keep = tmp_path / "mine" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        export(tiny_model, "ct2", keep.parent)
    assert keep.read_text() == "mine"
    with pytest.raises(ValueError, match="holds the model"):
        export(tiny_model, "ct2", tiny_model.parent)


def test_a_checkpoint_missing_weights_is_refused(tiny_model, tmp_path):
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    state = load_file(broken / "model.safetensors")
    del state["model.encoder.layers.0.fc1.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="fc1.weight"):
        export(broken, "ct2", tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_cli_exports_and_rejects_a_bad_source(tiny_model, tmp_path, capsys):
    out = tmp_path / "ct2"
    assert main(["export", str(_run_dir(tiny_model, tmp_path / "run")), "--format", "ct2", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ctranslate2.models.Whisper(str(out), intra_threads=CT2_THREADS)
    assert main(["export", str(tmp_path / "nothing"), "--format", "ct2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ray-asr export: ") and str(tmp_path / "nothing") in err and err.count("\n") == 1
