"""Peak memory of TrRa-iter: 3 iterations vs 1, same student, teachers and data (CPU, fp32, AdamW).

Each variant runs in its own subprocess; its peak is the peak resident set size above the resident size once the
models A and B exist (`PeakMemory`). If iteration k's trainer (student, AdamW state, teachers, accelerator) were still
alive while k+1's is built, the 3-iteration peak would be about twice the 1-iteration one.

Prints one JSON object as its last line. Target: `peak_ratio` = 3-iteration peak / 1-iteration peak ≤ 1.2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile

from _measure import PeakMemory  # benchmarks/ is the script's folder, so its helper imports directly


def run_variant(iterations: int, args) -> dict:
    import torch
    from datasets import Dataset

    from trl_realign import TrRaConfig, train_trra_iterations
    from trl_realign.data.tokenizer import build_char_tokenizer
    from trl_realign.testing import tiny_causal_lm

    logging.disable(logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = build_char_tokenizer()
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(args.vocab - len(tokenizer))])
    model_kwargs = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers)
    a = tiny_causal_lm("qwen2", seed=0, **model_kwargs)
    b = tiny_causal_lm("qwen2", seed=1, **model_kwargs)
    rows = [{"prompt": f"{i}+{i * 7}=", "completion": str(i + i * 7) * 8} for i in range(1, 9)]
    memory = PeakMemory()
    memory.start()
    with tempfile.TemporaryDirectory() as out:
        config = TrRaConfig(output_dir=out, per_device_train_batch_size=4, max_steps=args.steps, use_cpu=True,
                            bf16=False, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                            realign_lambda=2.0)
        train_trra_iterations(a, b, config, iterations, Dataset.from_list(rows), processing_class=tokenizer)
    params_mb = sum(p.numel() * p.element_size() for p in a.parameters()) / 2**20
    return {"peak_mb": memory.peak_mib(), "model_mb": params_mb, "method": memory.method}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per iteration")
    parser.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations:
        print(json.dumps(run_variant(args.iterations, args)))
        return
    results = {}
    for iterations in (1, 3):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--iterations", str(iterations)],
                             capture_output=True, text=True, check=True)
        results[iterations] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = results[3]["peak_mb"] / results[1]["peak_mb"]
    print(json.dumps({
        "one_iteration_peak_mb": round(results[1]["peak_mb"], 1),
        "three_iterations_peak_mb": round(results[3]["peak_mb"], 1),
        "model_mb": round(results[1]["model_mb"], 1),
        "peak_ratio": round(ratio, 3),
        "targets": {"peak_ratio": 1.2},
        "targets_met": ratio <= 1.2,
        "method": results[1]["method"],
        "config": {k: v for k, v in vars(args).items() if k != "iterations"},
    }))


if __name__ == "__main__":
    main()
