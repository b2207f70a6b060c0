"""Where a minimum-WER training step spends its time, with each clip's cross-attention keys and values shared by
its hypotheses (projected once, `reward.shared_cross_attention`, and never copied when the beams reorder,
`reward._beam_cache`) and with transformers' own per-row projections and cache, side by side:

    python bench/mwer_step.py [--model runs/reward/start] [--clips 16] [--n-best 4] [--threads 2]

One batch of demo training clips, encoder output computed once beforehand (as the activation cache gives it),
whisper-base with the training's reassociated cross-attention installed: the N-best beam search (no gradient),
then `reward.Objective.loss` (the N-best again, plus the scoring forward) and its backward. Prints the seconds
of each part and the operators that dominate the shared version.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import torch
from profile_step import batch
from torch.profiler import ProfilerActivity, profile

from ray_asr import config, cross_attention, evaluate, reward
from ray_asr.model import apply_strategy, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/reward/start")
    parser.add_argument("--manifest", default="data/demo/train.jsonl")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--n-best", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features, targets, _, tokenizer = batch(args.model, args.manifest, args.clips)
    cfg = config.from_dict({"train": {"strategy": "freeze", "objective": "mwer", "mwer": {"n_best": args.n_best}}})
    model = apply_strategy(load(args.model), cfg.train)
    cross_attention.install(model)
    with torch.no_grad():
        hidden = model.model.encoder(input_features=features).last_hidden_state
    texts = [tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True) for row in targets.tolist()]
    rows = {"labels": targets, "text": texts}
    limits = evaluate.token_limits(targets)

    def decode():
        model.eval()
        return reward.nbest(model, tokenizer, targets, "en", args.n_best, "beam", 1.0, limits, False, 0, hidden)

    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        reward.Objective(cfg.train, tokenizer, "en", seed=0).loss(model, hidden, rows, True, False, lambda n: n, 1).backward()

    times = {}
    for name, sharing in (("per row", False), ("shared", True)):
        with contextlib.ExitStack() as patches:
            if not sharing:
                patches.enter_context(mock.patch.object(reward, "shared_cross_attention", lambda *a: contextlib.nullcontext()))
                patches.enter_context(mock.patch.object(reward, "_beam_cache", lambda: None))
            for part, fn in (("N-best decode", decode), ("decode + scoring step", step)):
                started = time.perf_counter()
                if sharing and part == "decode + scoring step":
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        fn()
                else:
                    fn()
                times[name, part] = time.perf_counter() - started
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))
    found = decode()
    print(f"{args.clips} clips, {args.n_best}-best ({len(found.owner)} distinct hypotheses), {args.threads} threads:")
    for part in ("N-best decode", "decode + scoring step"):
        before, after = times["per row", part], times["shared", part]
        print(f"  {part:<22} per row {before:6.1f} s   shared {after:6.1f} s   {before / after:4.2f}x")


if __name__ == "__main__":
    main()
