"""Decoder cross-attention with its key and value projections moved past the attention, for short labels.

Each decoder layer attends over the encoder's 1500 positions. The usual order projects all of them
first, K = H Wk^T and V = H Wv^T + bv: 2 x 1500 x d^2 multiply-adds per layer and clip, and as many
again for the weight gradients, though a label has only T ~ 20-40 tokens. Attention is linear in K
and V, so for each head h (Wk[h], Wv[h]: the head's rows of the projections):

    scores_h = Q_h K_h^T = (Q_h Wk[h]) H^T              T x d  @  d x 1500
    out_h    = softmax(scores_h) V_h = (P_h H) Wv[h]^T + bv[h]      (each row of P_h sums to 1)

which costs 2 x heads x T x 1500 x d instead of 2 x 1500 x d^2 (+ the same for the gradients): 2.7x
less for whisper-base (8 heads, d=512) at T=24. Same values up to float rounding (~1e-6). Used
only where it is exact and cheaper: no KV cache (training and loss forwards, `use_cache=False`), no
mask, no attention dropout in training, heads x T < d, plain `nn.Linear` projections (not LoRA),
and weights that are not ZeRO-3 partitions (it reads them directly, outside their modules' hooks).
"""

from __future__ import annotations

import types

import torch
from torch import nn


def _reassociated(self, hidden_states, key_value_states=None, cache=None, attention_mask=None,
                  output_attentions=False, **kwargs):
    batch, tokens, width = hidden_states.shape
    heads, head_dim = self.num_heads, self.head_dim
    usable = (key_value_states is not None and cache is None and attention_mask is None and not output_attentions
              and heads * tokens < width and not (self.training and self.dropout > 0))
    if not usable:
        return self._standard_forward(hidden_states, key_value_states=key_value_states, cache=cache,
                                      attention_mask=attention_mask, output_attentions=output_attentions, **kwargs)
    states = key_value_states  # (batch, positions, width)
    query = (self.q_proj(hidden_states) * self.scaling).view(batch, tokens, heads, head_dim)
    # Heads fold into the query axis, so every product is one batched matmul against the shared states.
    folded = torch.einsum("bthe,hed->bhtd", query, self.k_proj.weight.view(heads, head_dim, width))
    scores = torch.bmm(folded.reshape(batch, heads * tokens, width), states.transpose(1, 2))  # (b, h*t, positions)
    mixed = torch.bmm(scores.softmax(dim=-1), states).view(batch, heads, tokens, width)  # P_h H
    out = torch.einsum("bhtd,hed->bthe", mixed, self.v_proj.weight.view(heads, head_dim, width))
    if self.v_proj.bias is not None:
        out = out + self.v_proj.bias.view(heads, head_dim)
    return self.out_proj(out.reshape(batch, tokens, width)), None


def install(model) -> int:
    """Switches eligible decoder cross-attention modules of a Whisper model to the reassociated forward.

    Returns how many were switched (0 where the projections are LoRA layers)."""
    count = 0
    for layer in model.model.decoder.layers:
        attention = layer.encoder_attn
        if type(attention.k_proj) is not nn.Linear or type(attention.v_proj) is not nn.Linear:
            continue
        if not hasattr(attention, "_standard_forward"):
            attention._standard_forward = attention.forward
            attention.forward = types.MethodType(_reassociated, attention)
        count += 1
    return count
