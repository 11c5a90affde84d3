"""TrRa from a teacher cache vs live TrRa vs SFT, at Qwen2.5-0.5B's dimensions (random weights, fp32, CPU).

The setting of `real_shape_step.py` (batch 1 of `--seq_len` pre-tokenised tokens, the second half a completion, λ=2),
with four variants, each in a fresh subprocess so that peak memories do not mix:

- `sft`: `SFTTrainer`, the floor;
- `live`: `TrRaTrainer` with the two teachers in memory (both run forward every step);
- `capture`: `build_teacher_cache` over the same rows (A = the student's starting weights, B another model);
- `cached`: `TrRaTrainer(teacher_cache=...)`: the teachers' hidden states are read from the capture, their two heads
  are the only teacher weights in memory.

Step time: median of the steps after `--warmup`. Peak: the process's peak resident set (VmHWM). A sweep of 5 points
of k = warmup + steps steps each is priced from these single runs (each run's whole wall time, model loading
included): `sweep5_vs_live5` = (capture + 5 cached runs) / (5 live runs).

Targets: `cached_vs_sft_step` ≤ 1.15, `cached_vs_live_step` ≤ 0.75, `cached_extra_peak_vs_heads` (cached peak above
SFT's, over the two heads' bytes) ≤ 1.2, `sweep5_vs_live5` ≤ 0.85. Also reported: capture tokens/s and bytes per
cached token against 2·H·4 (fp32). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from _measure import StepTimer, status_kb  # benchmarks/ is the script's folder: imports directly
from _shapes import qwen2_model
from real_shape_step import build_trainer, id_tokenizer, make_parser, parse_args, token_dataset


VARIANTS = ("sft", "live", "capture", "cached")
LAMBDA = 2.0


def trra_args(output_dir: str, steps: int, **overrides):
    """The TrRa config of the `live`, `capture` and `cached` variants (fp32 on the CPU unless `overrides` say else)."""
    from trl_realign import TrRaConfig

    kwargs = dict(output_dir=output_dir, per_device_train_batch_size=1, per_device_eval_batch_size=1, max_steps=steps,
                  learning_rate=1e-5, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                  logging_strategy="no", disable_tqdm=True, seed=0, max_length=None, realign_lambda=LAMBDA)
    return TrRaConfig(**{**kwargs, **overrides})


def run_variant(args, shape) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    vocab, steps = shape["vocab_size"], args.warmup + args.steps
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.variant == "capture":
            from trl_realign import build_teacher_cache

            begin = time.perf_counter()
            build_teacher_cache(qwen2_model(shape, seed=0), qwen2_model(shape, seed=2),
                                trra_args(tmp, steps, teacher_cache=args.cache_dir),
                                token_dataset(steps, args.seq_len, vocab), processing_class=id_tokenizer(vocab))
            figures["capture_s"] = time.perf_counter() - begin
            manifest = json.load(open(os.path.join(args.cache_dir, "manifest.json")))
            figures.update(tokens=manifest["tokens"], disk_bytes=manifest["disk_bytes"])
            shards = sum(
                os.path.getsize(os.path.join(root, name))
                for root, _, names in os.walk(args.cache_dir) for name in names if name.startswith("shard-")
            )
            figures["shard_bytes"] = shards
        else:
            timer = StepTimer()
            if args.variant == "cached":
                from trl_realign import TrRaTrainer

                trainer = TrRaTrainer(model=qwen2_model(shape, seed=0),
                                      args=trra_args(tmp, steps, teacher_cache=args.cache_dir),
                                      train_dataset=token_dataset(steps, args.seq_len, vocab),
                                      processing_class=id_tokenizer(vocab), callbacks=[timer])  # fmt: skip
            else:
                variant = "trra" if args.variant == "live" else "sft"
                trainer = build_trainer(variant, shape, tmp, steps, args.seq_len, [timer])
            trainer.train()
            figures["step_s"] = statistics.median(timer.times[args.warmup:])
            figures["step_times"] = timer.times
            figures["model_weights_mb"] = sum(p.numel() * p.element_size() for p in trainer.model.parameters()) / 2**20
    figures["peak_mb"] = status_kb("VmHWM") / 1024
    figures["run_s"] = time.perf_counter() - start  # model building and loading included (what a sweep point pays)
    return figures


def main():
    parser = make_parser(__doc__, VARIANTS)
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args, shape = parse_args(parser)
    if args.variant:
        print(json.dumps(run_variant(args, shape)))
        return

    load_before = os.getloadavg()[0]
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = os.path.join(tmp, "cache")
        for variant in VARIANTS:
            process_start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--cache_dir",
                                  cache_dir], capture_output=True, text=True)  # fmt: skip
            if out.returncode != 0:
                sys.exit(f"{variant} failed:\n{out.stderr[-4000:]}")
            figures[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            # The whole process: interpreter start and imports too, as a sweep point launched by the CLI pays
            figures[variant]["process_s"] = time.perf_counter() - process_start
            print(f"{variant}: {figures[variant]}", file=sys.stderr, flush=True)
    sft, live, capture, cached = (figures[v] for v in VARIANTS)
    hidden, vocab = shape["hidden_size"], shape["vocab_size"]
    heads_mb = 2 * vocab * hidden * 4 / 2**20
    cached_vs_sft = cached["step_s"] / sft["step_s"]
    cached_vs_live = cached["step_s"] / live["step_s"]
    extra_vs_heads = (cached["peak_mb"] - sft["peak_mb"]) / heads_mb
    sweep5 = capture["process_s"] + 5 * cached["process_s"]
    live5 = 5 * live["process_s"]
    bytes_per_token = capture["disk_bytes"] / capture["tokens"]
    targets = {"cached_vs_sft_step": 1.15, "cached_vs_live_step": 0.75, "cached_extra_peak_vs_heads": 1.2,
               "sweep5_vs_live5": 0.85}  # fmt: skip
    result = {
        "cached_vs_sft_step": round(cached_vs_sft, 4),
        "cached_vs_live_step": round(cached_vs_live, 4),
        "live_vs_sft_step": round(live["step_s"] / sft["step_s"], 4),
        "cached_extra_peak_vs_heads": round(extra_vs_heads, 4),
        "sweep5_vs_live5": round(sweep5 / live5, 4),
        "sft_step_s": round(sft["step_s"], 3),
        "live_step_s": round(live["step_s"], 3),
        "cached_step_s": round(cached["step_s"], 3),
        "sft_peak_mb": round(sft["peak_mb"], 1),
        "live_peak_mb": round(live["peak_mb"], 1),
        "cached_peak_mb": round(cached["peak_mb"], 1),
        "two_heads_mb": round(heads_mb, 1),
        "capture_s": round(capture["capture_s"], 3),
        "capture_tokens": capture["tokens"],
        "capture_tokens_per_s": round(capture["tokens"] / capture["capture_s"], 1),
        "bytes_per_token": round(bytes_per_token, 1),
        "shard_bytes_per_token": round(capture["shard_bytes"] / capture["tokens"], 1),
        "hidden_bytes_per_token": 2 * hidden * 4,
        "process_s": {v: round(f["process_s"], 2) for v, f in figures.items()},
        "step_times": {v: [round(t, 3) for t in f["step_times"]] for v, f in figures.items() if "step_times" in f},
        "targets": targets,
        "targets_met": {
            "cached_vs_sft_step": cached_vs_sft <= targets["cached_vs_sft_step"],
            "cached_vs_live_step": cached_vs_live <= targets["cached_vs_live_step"],
            "cached_extra_peak_vs_heads": extra_vs_heads <= targets["cached_extra_peak_vs_heads"],
            "sweep5_vs_live5": sweep5 / live5 <= targets["sweep5_vs_live5"],
        },
        "config": {"shape": "small" if args.small else "qwen2.5-0.5b", **shape, "seq_len": args.seq_len, "batch": 1,
                   "warmup": args.warmup, "steps": args.steps, "threads": args.threads, "dtype": "float32",
                   "realign_lambda": LAMBDA},  # fmt: skip
        "machine": dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                        load_average_1min_before=round(load_before, 2),
                        load_average_1min_after=round(os.getloadavg()[0], 2)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
