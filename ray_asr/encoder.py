"""Whisper's encoder split at the frozen boundary, the frozen part's output cached per clip.

    log-mel ─► conv1, conv2, positions ─► layers[:N] ──► boundary ──► layers[N:] ─► layer_norm ─► decoder
               └──── frozen: no autograd, computed once per clip ───┘  └──────── trains ───────┘

The ops are those of transformers' `WhisperEncoder.forward`, in its order, so the encoder output (and
the loss) is bit-equal to the model's own forward whether the boundary came from the cache or not.
Used only where the frozen part is deterministic: no dropout or layer drop in the encoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from ray_asr.activation_cache import ActivationCache


def whisper_of(model):
    """The `WhisperForConditionalGeneration` inside `model` (itself, or a peft model's base)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def deterministic(config) -> bool:
    """Whether the encoder's forward is the same every time in training mode (no dropout, no layer drop)."""
    return not any(getattr(config, key, 0.0) for key in ("dropout", "attention_dropout", "activation_dropout",
                                                          "encoder_layerdrop"))


def fingerprint(model, depth: int, dtype: torch.dtype) -> str:
    """A digest of everything the boundary activations depend on: frozen weights, depth, dtype, attention kernel.

    Call it before DeepSpeed partitions the weights (ZeRO-3 leaves each rank an empty shell)."""
    encoder = whisper_of(model).model.encoder
    # v2: bf16 encoder self-attention on a CPU runs one head at a time (`ray_asr.encoder_attention`), rounding apart.
    digest = hashlib.blake2b(f"v2|{depth}|{dtype}|{encoder.config._attn_implementation}".encode(), digest_size=16)
    for module in _frozen_modules(encoder, depth):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to(dtype).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _frozen_modules(encoder, depth: int) -> list[nn.Module]:
    modules = [encoder.conv1, encoder.conv2, encoder.embed_positions, *encoder.layers[:depth]]
    return modules + [encoder.layer_norm] if depth == len(encoder.layers) else modules


class FrozenBoundary:
    """Computes the encoder output of a batch, the frozen part from the cache where it can.

    `anyone(flag)` tells whether `flag` holds on some rank; under ZeRO-3 every rank must run the same
    module forwards (each gathers its weights collectively), so a rank whose clips were all cached
    still runs the frozen part on one clip while another rank computes its misses.
    """

    def __init__(self, model, depth: int, cache: ActivationCache | None = None,
                 anyone: Callable[[bool], bool] | None = None):
        self.encoder = whisper_of(model).model.encoder
        self.depth, self.cache, self.anyone = depth, cache, anyone
        self.all_frozen = depth == len(self.encoder.layers)

    def frozen(self, features: torch.Tensor) -> torch.Tensor:
        """`(batch, n_mels, 3000)` → the boundary activations `(batch, 1500, d_model)`."""
        encoder = self.encoder
        hidden = nn.functional.gelu(encoder.conv1(features))
        hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        positions = torch.arange(encoder.embed_positions.num_embeddings, device=hidden.device)
        hidden = hidden + encoder.embed_positions(positions)
        for layer in encoder.layers[: self.depth]:
            hidden = layer(hidden, None)
        return encoder.layer_norm(hidden) if self.all_frozen else hidden

    def top(self, hidden: torch.Tensor) -> torch.Tensor:
        """The trainable layers above the boundary (autograd as the caller's mode says)."""
        if self.all_frozen:
            return hidden
        for layer in self.encoder.layers[self.depth :]:
            hidden = layer(hidden, None)
        return self.encoder.layer_norm(hidden)

    def __call__(self, features: torch.Tensor, keys: list[str | None]) -> torch.Tensor:
        """The encoder output `(batch, 1500, d_model)` of a batch; `keys[i]` names clip i in the cache (None: never cached)."""
        with torch.no_grad():
            boundary = self._boundary(features, keys)
        return self.top(boundary)

    def _boundary(self, features: torch.Tensor, keys: list[str | None]) -> torch.Tensor:
        if self.cache is None:
            return self.frozen(features)
        found = [self.cache.get(key, features.dtype) if key else None for key in keys]
        missing = [i for i, tensor in enumerate(found) if tensor is None]
        computes = bool(missing)
        if self.anyone is not None and self.anyone(computes) and not computes:
            self.frozen(features[:1])  # in step with ranks that compute (ZeRO-3 gathers weights collectively)
        if not missing:
            return torch.stack(found).to(features.device)
        computed = self.frozen(features if len(missing) == len(keys) else features[missing])
        for row, i in enumerate(missing):
            if keys[i]:
                self.cache.put(keys[i], computed[row])
            found[i] = computed[row]
        return torch.stack([t.to(features.device) for t in found])
