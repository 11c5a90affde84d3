"""One training step (generation + loss + optimizer) of on-policy TrRa vs TRL's DistillationTrainer with one teacher.

Same student, prompts, generation settings (fixed-length sampling) and batch; CPU, fp32. Each variant runs in its own
subprocess so that its peak memory is its own. Prints one JSON object as its last line, with `targets_met`:

- `step_ratio` = on-policy TrRa step / DistillationTrainer step ≤ 1.25 (one more teacher forward, no more loss cost);
- `peak_memory_ratio` = (TrRa peak − the second teacher's weights) / DistillationTrainer peak ≤ 1.2, peaks measured
  from before the models are built;
- `generation_share`: the fraction of each step spent generating (reported, no target).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile

import torch


def run_variant(args) -> dict:
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from _measure import GenerationTimer, PeakMemory, StepTimer  # benchmarks/ is the script's folder: imports directly
    from trl_realign import OnPolicyTrRaConfig, OnPolicyTrRaTrainer
    from trl_realign.data.tokenizer import build_char_tokenizer
    from trl_realign.testing import tiny_causal_lm

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    tokenizer = build_char_tokenizer()
    # Every token the tokenizer can produce is scored: give it the full vocabulary, as a real tokenizer would
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(args.vocab - len(tokenizer))])
    g = torch.Generator().manual_seed(0)
    chars = "0123456789+=abcdefghijklmnopqrstuvwxyz "
    prompts = ["".join(chars[i] for i in torch.randint(len(chars), (args.prompt_len,), generator=g).tolist())
               for _ in range(args.batch * (args.steps + 2))]  # fmt: skip
    data = Dataset.from_list([{"prompt": p} for p in prompts])

    memory = PeakMemory()
    memory.start()
    model_kwargs = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        max_position_embeddings=1024)  # fmt: skip
    student = tiny_causal_lm("qwen2", seed=0, **model_kwargs)
    aligned = tiny_causal_lm("qwen2", seed=1, **model_kwargs)
    timer = StepTimer()
    common = dict(output_dir=args.output_dir, per_device_train_batch_size=args.batch, max_steps=args.steps + 2,
                  learning_rate=1e-5, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                  logging_strategy="no", disable_tqdm=True, seed=0, max_completion_length=args.completion_len,
                  generation_kwargs={"min_new_tokens": args.completion_len})  # fmt: skip
    if args.variant == "distillation":
        trainer = DistillationTrainer(model=student, teacher_model=aligned, args=DistillationConfig(**common),
                                      train_dataset=data, processing_class=tokenizer, callbacks=[timer])  # fmt: skip
    else:
        trainer = OnPolicyTrRaTrainer(model=student, ref_model=copy.deepcopy(student), aligned_model=aligned,
                                      args=OnPolicyTrRaConfig(realign_lambda=2.0, **common), train_dataset=data,
                                      processing_class=tokenizer, callbacks=[timer])  # fmt: skip

    generation_timer = GenerationTimer(trainer)
    trainer.train()
    step = statistics.median(timer.times[2:])
    generation = statistics.median(generation_timer.times[2:])
    teacher_mib = sum(p.numel() * p.element_size() for p in aligned.parameters()) / 2**20
    return {"step_s": step, "generation_s": generation, "peak_mib": memory.peak_mib(), "teacher_mib": teacher_mib,
            "memory_method": memory.method}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--completion_len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variant", choices=["distillation", "onpolicy_trra"], help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    options = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("variant", "output_dir") and v is not None]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("distillation", "onpolicy_trra"):
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            out = subprocess.run([sys.executable, __file__, *options, f"--variant={variant}", f"--output_dir={tmp}"],
                                 capture_output=True, text=True, check=True, env=env, timeout=1800)  # fmt: skip
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    trl, ours = results["distillation"], results["onpolicy_trra"]
    step_ratio = ours["step_s"] / trl["step_s"]
    peak_memory_ratio = (ours["peak_mib"] - ours["teacher_mib"]) / trl["peak_mib"]
    summary = {
        **results,
        "step_ratio": step_ratio,
        "peak_memory_ratio": peak_memory_ratio,
        "generation_share": {"distillation": trl["generation_s"] / trl["step_s"],
                             "onpolicy_trra": ours["generation_s"] / ours["step_s"]},  # fmt: skip
        "targets": {"step_ratio": 1.25, "peak_memory_ratio": 1.2},
        "targets_met": {"step_ratio": step_ratio <= 1.25, "peak_memory_ratio": peak_memory_ratio <= 1.2},
        "config": {k: v for k, v in vars(args).items() if k not in ("variant", "output_dir")},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
