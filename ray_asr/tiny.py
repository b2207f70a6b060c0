"""A tiny randomly initialised Whisper with a byte-level tokenizer, built offline in a second.

Tests and `configs/smoke.yaml` use it: it has Whisper's architecture, special tokens, prompt and
generation config, so every code path runs, but with 2+2 layers of width 64 it trains on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from ray_asr.ct2 import generation_config


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode table: 256 printable symbols, one per byte (what byte-level BPE uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return {c: i for i, c in enumerate(chars)}


def special_tokens(timestamps: bool = False) -> list[str]:
    """Whisper's special tokens in Whisper's order (end-of-text first, then languages and tasks), with the
    1501 timestamp tokens `<|0.00|>` .. `<|30.00|>` last if asked for."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    times = [f"<|{i * 0.02:.2f}|>" for i in range(1501)] if timestamps else []
    return (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
            + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
            + times)


def build_tokenizer(out_dir: str | Path, timestamps: bool = False):
    """Writes a byte-level Whisper tokenizer (no merges) to `out_dir` and returns it; `timestamps` adds Whisper's
    timestamp tokens (the other tests' tiny model does without them: 1501 fewer output rows)."""
    from transformers import WhisperTokenizer

    vocab = _byte_vocab()
    for token in special_tokens(timestamps):
        vocab[token] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens(timestamps)[1:]})
    tokenizer.save_pretrained(out_dir)
    return WhisperTokenizer.from_pretrained(out_dir)


def build_tiny_whisper(out_dir: str | Path, n_mels: int = 80, d_model: int = 64, layers: int = 2, seed: int = 0,
                       language: str = "en", task: str = "transcribe", timestamps: bool = False) -> Path:
    """Writes a tiny random Whisper folder (model, tokenizer, feature extractor, generation config)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir, timestamps)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=n_mels, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"), tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = generation_config(config, tokenizer, {"suppress_ids_begin": [eot]}, language, task)
    model.save_pretrained(out_dir, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(out_dir)
    return out_dir
