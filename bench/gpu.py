"""GPU readiness: ray-asr's training step on one device under ZeRO-2 and ZeRO-3, and the HF recipe beside it.

On a CUDA machine: whisper-small (random weights of its shape unless `--model` names a folder; speed
does not depend on the values), full fine-tuning, `train.precision: auto` (bf16 on a GPU that has it),
log-mel computed on the GPU from waveforms (as ray-asr's workers do), SDPA attention, torch's fused
AdamW, DeepSpeed over NCCL with one rank. Per configuration: samples/s, tokens/s, peak device
memory and MFU, the share of the device's dense bf16 peak that the model's FLOPs use:

    model FLOPs per step = 2 x params x tokens (forward) + 4 x params x tokens (backward, every layer trains)
    tokens: encoder 1500 positions per clip, decoder the label tokens; summed per stack

The HF recipe (`Seq2SeqTrainer`, `bf16=True`, log-mel precomputed as `datasets.map` would) runs the
same model, batch and labels on the same device for the ratio.

    python bench/gpu.py [--batch 32] [--steps 20] [--out results.json]     # on a GPU machine
    python bench/gpu.py --device cpu --tiny --steps 2 --batch 2             # the check the test suite runs

Needs torch, transformers and deepspeed (no Ray, soundfile or datasets); on a machine without
deepspeed, carry its wheel (`pip wheel --no-deps deepspeed`, plus hjson and pydantic).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ray_asr from this checkout, installed or not

from ray_asr import hardware
from ray_asr.config import TrainConfig
from ray_asr.features import log_mel

ENCODER_POSITIONS = 1500  # Whisper's encoder positions per clip (30 s / 20 ms)
# Dense bf16 peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched on the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
SMALL = {"d_model": 768, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 12,  # whisper-small
         "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, "vocab_size": 51865,
         "num_mel_bins": 80}


def model_folder(args, scratch: Path) -> Path:
    """The model to benchmark: `--model`, the tiny test model, or whisper-small's shape with random weights."""
    if args.model:
        return Path(args.model)
    if args.tiny:
        from ray_asr.tiny import build_tiny_whisper

        return build_tiny_whisper(scratch / "tiny")
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    eot = 50257
    config = WhisperConfig(**SMALL, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=50258)
    WhisperForConditionalGeneration(config).save_pretrained(scratch / "small", safe_serialization=True)
    return scratch / "small"


def synthetic_batch(batch: int, label_tokens: int, vocab: int, seconds: float, seed: int = 0):
    """Waveforms of `seconds` (noise: the cost does not depend on content) and labels ending in end-of-text."""
    generator = torch.Generator().manual_seed(seed)
    waves = 0.1 * torch.randn(batch, int(seconds * 16_000), generator=generator)
    labels = torch.randint(0, min(vocab, 50_000), (batch, label_tokens), generator=generator)
    labels[:, -1] = vocab - 1 if vocab < 50_258 else 50_257
    return waves, labels


def flops_per_step(model, batch: int, label_tokens: int) -> float:
    """The issue's model-FLOPs count: 2PT forward + 4PT backward per stack (encoder, decoder), every layer training."""
    whisper = model.model
    encoder = sum(p.numel() for p in whisper.encoder.parameters())
    decoder = sum(p.numel() for p in whisper.decoder.parameters())  # its token embedding is the output projection too
    tokens = {"encoder": batch * ENCODER_POSITIONS, "decoder": batch * label_tokens}
    return 6 * (encoder * tokens["encoder"] + decoder * tokens["decoder"])


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    if device.type != "cuda":
        return None, "no peak known for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value, f"{name}, data sheet"
    return None, f"{name}: unknown peak (pass --peak-tflops)"


def timed(step, model, args) -> tuple[float, object]:
    """Seconds per step after `args.warmup` untimed ones, and the model (for its parameter counts)."""
    device = torch.device(args.device)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / args.steps, model


def memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB → GiB)


def ray_asr_step(folder: Path, stage: int, args, device: torch.device, precision: str):
    """One ray-asr training step as its workers run it: log-mel on the device, DeepSpeed engine, fused AdamW."""
    import deepspeed

    from ray_asr import model as model_lib
    from ray_asr.train import teacher_forced_loss
    from ray_asr.zero import deepspeed_config, optimizer

    train = TrainConfig(strategy="full", batch_size_per_worker=args.batch, learning_rate=1e-5)
    train.deepspeed.stage = stage
    net = model_lib.apply_strategy(model_lib.load(str(folder)), train)
    params = [p for p in net.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=net, model_parameters=params, optimizer=optimizer(train, params),
                                      config=deepspeed_config(train, 10_000, precision))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    waves, labels = synthetic_batch(args.batch, args.label_tokens, net.config.vocab_size, args.seconds)
    waves, labels = waves.to(device), labels.to(device)
    engine.train()

    def step():
        features = log_mel(waves, net.config.num_mel_bins).to(dtype)
        loss = teacher_forced_loss(engine, net.config, {"input_features": features}, {"labels": labels})
        engine.backward(loss)
        engine.step()

    return step, net


def hf_recipe(folder: Path, args, device: torch.device, precision: str) -> tuple[float, object]:
    """The HF recipe's `Seq2SeqTrainer.train()` on precomputed log-mel, mixed precision: seconds per step after
    the warm-up steps (between step ends, data loading included, as the recipe runs)."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(str(folder))
    waves, labels = synthetic_batch(args.batch, args.label_tokens, model.config.vocab_size, args.seconds)
    features = log_mel(waves, model.config.num_mel_bins)  # precomputed, as datasets.map stores it
    rows = [{"input_features": features[i], "labels": labels[i]} for i in range(args.batch)]
    steps = args.warmup + args.steps
    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_, **__):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ends.append(time.perf_counter())

    def collate(items):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    training = Seq2SeqTrainingArguments(output_dir=tempfile.mkdtemp(prefix="hf-recipe-"), max_steps=steps,
                                        per_device_train_batch_size=args.batch, learning_rate=1e-5,
                                        bf16=precision == "bf16", fp16=precision == "fp16", report_to=[],
                                        use_cpu=device.type == "cpu", save_strategy="no", logging_steps=10**6)
    trainer = Seq2SeqTrainer(model=model, args=training, train_dataset=rows * steps, data_collator=collate,
                             callbacks=[StepEnds()])
    trainer.train()
    return (ends[-1] - ends[args.warmup - 1]) / args.steps, model


def join_process_group(device: torch.device) -> None:
    """A one-rank process group for DeepSpeed (NCCL on a GPU, gloo on a CPU), as Ray Train would make."""
    from ray_asr.zero import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29517"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    init_distributed("nccl" if device.type == "cuda" else "gloo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="HF Whisper folder (default: whisper-small's shape, random weights)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model (CPU check)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--label-tokens", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per clip (Whisper pads it to 30 s)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = hardware.resolve_precision("auto", device)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        folder = model_folder(args, Path(scratch))
        # The recipe first: once a process group exists, the Trainer would wrap the model in DDP.
        runs = [("HF recipe (Seq2SeqTrainer)", lambda: hf_recipe(folder, args, device, precision)),
                ("", lambda: join_process_group(device))]
        runs += [(f"ray-asr ZeRO-{s}", lambda s=int(s): timed(*ray_asr_step(folder, s, args, device, precision), args))
                 for s in args.stages.split(",")]
        for name, run in runs:
            if not name:
                run()
                continue
            memory_reset(device)
            seconds, model = run()
            flops = flops_per_step(model, args.batch, args.label_tokens)
            tokens = args.batch * (ENCODER_POSITIONS + args.label_tokens)
            row = {"name": name, "seconds_per_step": seconds, "samples_per_s": args.batch / seconds,
                   "tokens_per_s": tokens / seconds, "peak_memory_gib": peak_memory_gib(device),
                   "tflops": flops / seconds / 1e12, "mfu": flops / seconds / (peak * 1e12) if peak else None}
            results.append(row)
            print(json.dumps(row), flush=True)
            del model
    print(f"\n{device} ({peak_source}), precision {precision}, batch {args.batch}, {args.label_tokens} label tokens, "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'run':<28}{'s/step':>8}{'samples/s':>11}{'tokens/s':>11}{'peak GiB':>10}{'TFLOP/s':>9}{'MFU':>7}")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{r['name']:<28}{r['seconds_per_step']:>8.3f}{r['samples_per_s']:>11.1f}{r['tokens_per_s']:>11.0f}"
              f"{r['peak_memory_gib']:>10.2f}{r['tflops']:>9.1f}{mfu:>7}")
    hf = results[0]["samples_per_s"]
    for r in results[1:]:
        print(f"{r['name']} / HF recipe: {r['samples_per_s'] / hf:.2f}x samples/s")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(device), "peak": peak_source, "precision": precision,
                                              "batch": args.batch, "results": results}, indent=1))


if __name__ == "__main__":
    main()
