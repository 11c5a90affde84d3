"""Layer-adapter training vs full fine-tuning on the same model and data (CPU, fp32, AdamW, TRL defaults otherwise).

Four variants, each in a fresh subprocess so that no allocator state leaks between them: adapter SFT, full SFT
(`SFTTrainer`), adapter DPO (implicit reference: the model with its adapter skipped) and full DPO (`DPOTrainer`, which
loads a reference copy). The model is loaded first; then the peak-RSS counter is reset (`/proc/self/clear_refs`, or
the RSS at that point is subtracted from `ru_maxrss` where that is not allowed) and the trainer is built and trained:
the memory figure is the peak RSS above "model loaded", so it counts the reference copy, gradients, optimizer states
and activations. Step time is the median over the timed steps after warm-up.

Prints one JSON object as its last line. Targets: `step_time_ratio` (adapter / full SFT) ≤ 0.8, `peak_memory_ratio`
(adapter / full SFT) ≤ 0.5, `dpo_peak_memory_ratio` (adapter DPO / full DPO) ≤ 0.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from _measure import PeakMemory, StepTimer  # benchmarks/ is the script's folder, so its helper imports directly


TARGETS = {"step_time_ratio": 0.8, "peak_memory_ratio": 0.5, "dpo_peak_memory_ratio": 0.5}
VARIANTS = ("adapter_sft", "full_sft", "adapter_dpo", "full_dpo")


def _text(generator, length: int) -> str:
    chars = "0123456789+=abcdefghijklmnopqrstuvwxyz "
    return "".join(chars[i] for i in torch.randint(len(chars), (length,), generator=generator).tolist())


def _datasets(n: int, prompt_len: int, completion_len: int):
    g = torch.Generator().manual_seed(0)
    rows = [(_text(g, prompt_len), _text(g, completion_len), _text(g, completion_len)) for _ in range(n)]
    sft = Dataset.from_list([{"prompt": p, "completion": c} for p, c, _ in rows])
    dpo = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows])
    return sft, dpo


def run_variant(variant: str, model_dir: str, opts) -> dict:
    """Train one variant in this process and return its step time and peak memory above the loaded model."""
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from trl_realign.data.tokenizer import build_char_tokenizer
    from trl_realign.trainers import (
        LayerAdapterDPOConfig,
        LayerAdapterDPOTrainer,
        LayerAdapterSFTConfig,
        LayerAdapterSFTTrainer,
    )

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    sft_data, dpo_data = _datasets(opts.batch * (opts.steps + opts.warmup), opts.prompt_len, opts.completion_len)
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps + opts.warmup,
        learning_rate=1e-4,
        optim="adamw_torch",
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        max_length=opts.prompt_len + opts.completion_len + 8,
        dataloader_drop_last=True,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    memory = PeakMemory()
    memory.start()

    timer = StepTimer()
    if variant == "adapter_sft":
        trainer = LayerAdapterSFTTrainer(model, args=LayerAdapterSFTConfig(**common), train_dataset=sft_data,
                                         processing_class=tokenizer, callbacks=[timer])
    elif variant == "full_sft":
        trainer = SFTTrainer(model, args=SFTConfig(**common), train_dataset=sft_data, processing_class=tokenizer,
                             callbacks=[timer])
    elif variant == "adapter_dpo":
        trainer = LayerAdapterDPOTrainer(model, args=LayerAdapterDPOConfig(**common), train_dataset=dpo_data,
                                         processing_class=tokenizer, callbacks=[timer])
    elif variant == "full_dpo":
        # The reference copy is reloaded from `model.config._name_or_path` (= model_dir), as in real use
        trainer = DPOTrainer(model, args=DPOConfig(**common), train_dataset=dpo_data, processing_class=tokenizer,
                             callbacks=[timer])
    else:
        raise ValueError(f"Unknown variant {variant!r}; choose one of {VARIANTS}.")
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    return {
        "variant": variant,
        "step_s": statistics.median(timer.times[opts.warmup:]),
        "peak_mib": memory.peak_mib(),
        "trainable_params": trainable,
        "memory_method": memory.method,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=1, help="sequences (SFT) or pairs (DPO) per step")
    parser.add_argument("--prompt_len", type=int, default=48)
    parser.add_argument("--completion_len", type=int, default=80)
    parser.add_argument("--steps", type=int, default=4, help="timed steps, after --warmup steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one subprocess
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    if opts.variant:
        print(json.dumps(run_variant(opts.variant, opts.model_dir, opts)))
        return

    from trl_realign.testing import tiny_causal_lm

    with tempfile.TemporaryDirectory() as model_dir:
        model = tiny_causal_lm("qwen2", vocab_size=opts.vocab, hidden_size=opts.hidden, num_hidden_layers=opts.layers)
        model.save_pretrained(model_dir)
        params = sum(p.numel() for p in model.parameters())
        del model
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
        results = {}
        for variant in VARIANTS:
            argv = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--model_dir", model_dir]
            argv += [f"--{k}={getattr(opts, k)}" for k in ("batch", "prompt_len", "completion_len", "steps", "warmup", "threads")]
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"variant {variant} failed:\n{done.stderr[-4000:]}")
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])

    out = {
        "model": f"qwen2 {opts.layers} layers, hidden {opts.hidden}, vocab {opts.vocab} ({params / 1e6:.1f}M params, fp32)",
        "batch": opts.batch,
        "seq_len": opts.prompt_len + opts.completion_len,
        "threads": opts.threads,
        "memory_method": results["full_sft"]["memory_method"],
        **{f"{v}_step_s": round(r["step_s"], 4) for v, r in results.items()},
        **{f"{v}_peak_mib": round(r["peak_mib"], 1) for v, r in results.items()},
        **{f"{v}_trainable_params": r["trainable_params"] for v, r in results.items()},
        "step_time_ratio": results["adapter_sft"]["step_s"] / results["full_sft"]["step_s"],
        "peak_memory_ratio": results["adapter_sft"]["peak_mib"] / results["full_sft"]["peak_mib"],
        "dpo_peak_memory_ratio": results["adapter_dpo"]["peak_mib"] / results["full_dpo"]["peak_mib"],
        "targets": {k: f"<= {v}" for k, v in TARGETS.items()},
    }
    out["targets_met"] = {k: out[k] <= v for k, v in TARGETS.items()}
    for key in TARGETS:
        out[key] = round(out[key], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
