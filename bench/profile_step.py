"""Where a training step and an evaluation batch spend their time, before and after the performance work.

whisper-base, encoder frozen, one batch of 8 demo-corpus clips, this process, torch's profiler:

  step, before   the model's own forward from log-mel (frozen encoder included) + backward + foreach AdamW
                 (what every step ran before the activation cache)
  step, after    frozen encoder output from the activation cache (`ray_asr.encoder.FrozenBoundary`)
                 + decoder forward/backward with reassociated cross-attention (`ray_asr.cross_attention`)
                 + torch's fused AdamW
  eval, before   a loss forward from log-mel, then `generate` from log-mel: the encoder twice
  eval, after    the encoder output once (from the cache), for the loss and for `generate`

    python bench/profile_step.py [--threads 2] [--rows 12]

Run `ray-asr demo` once first (it imports whisper-base and builds the corpus).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers.modeling_outputs import BaseModelOutput

from ray_asr import cross_attention, evaluate, labels, sources
from ray_asr.activation_cache import ActivationCache
from ray_asr.collate import pad_labels, stack_waves
from ray_asr.config import TrainConfig
from ray_asr.encoder import FrozenBoundary, fingerprint
from ray_asr.features import log_mel
from ray_asr.model import apply_strategy, load
from ray_asr.prepare import prepare


def batch(model_dir: str, manifest: str, clips: int = 8):
    tokenizer = labels.load_tokenizer(model_dir, "en", "transcribe")
    rows = sources.read_all(manifest)[:clips]
    prepared = [prepare(row, tokenizer, 30.0) for row in rows]
    features = log_mel(stack_waves([wave for wave, _ in prepared]))
    return features, pad_labels([ids for _, ids in prepared]), [row["id"] for row in rows], tokenizer


def profiled(name: str, fn, rows: int) -> float:
    fn()  # warm-up: allocator, kernels, caches
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    print(f"\n== {name}: {seconds:.2f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=12, help="operators shown per profile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir).resolve()
    model_dir, manifest = str(workdir / "models" / "whisper-base"), str(workdir / "data" / "demo" / "train.jsonl")
    features, targets, ids, tokenizer = batch(model_dir, manifest)
    model = apply_strategy(load(model_dir), TrainConfig(strategy="freeze"))
    faster = copy.deepcopy(model)
    cross_attention.install(faster)
    depth = model.config.encoder_layers
    foreach = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    fused = torch.optim.AdamW([p for p in faster.parameters() if p.requires_grad], lr=1e-5, fused=True)
    limits = evaluate.token_limits(targets)
    with tempfile.TemporaryDirectory() as tmp:
        boundary = FrozenBoundary(faster, depth, ActivationCache(1024, tmp, fingerprint(faster, depth, torch.float32)))
        with torch.no_grad():
            boundary(features, ids)  # the first epoch's pass fills the cache

        def encoded():
            return BaseModelOutput(last_hidden_state=boundary(features, ids))

        def step_before():
            model.train()
            model(input_features=features, labels=targets).loss.backward()
            foreach.step()
            foreach.zero_grad(set_to_none=True)

        def step_after():
            faster.train()
            faster(encoder_outputs=encoded(), labels=targets, use_cache=False).loss.backward()
            fused.step()
            fused.zero_grad(set_to_none=True)

        @torch.no_grad()
        def eval_before():
            model.eval()
            model(input_features=features, labels=targets)
            evaluate.generate(model, limits, tokenizer.eos_token_id, language="en", input_features=features)

        @torch.no_grad()
        def eval_after():
            faster.eval()
            outputs = encoded()
            faster(encoder_outputs=outputs, labels=targets, use_cache=False)
            evaluate.generate(faster, limits, tokenizer.eos_token_id, language="en", encoder_outputs=outputs)

        times = {name: profiled(name, fn, args.rows) for name, fn in (
            ("step, before", step_before), ("step, after", step_after),
            ("eval batch, before", eval_before), ("eval batch, after", eval_after))}
    print(f"\nwhisper-base, encoder frozen, batch of 8, {args.threads} threads:")
    for kind in ("step", "eval batch"):
        before, after = times[f"{kind}, before"], times[f"{kind}, after"]
        print(f"  {kind:<11} before {before:6.2f} s   after {after:6.2f} s   {before / after:5.1f}x")


if __name__ == "__main__":
    main()
