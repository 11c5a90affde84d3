"""Forward + backward of the TrRa loss, streamed vs naive full-logit, at Qwen-1.5B scale (fp32, CPU).

Defaults: 2,048 completion tokens, vocab 151,936, hidden 1,536, λ=2, reverse KL. Each variant runs in its own
subprocess; its peak memory (`*_peak_mb`) is the peak resident set size (VmHWM, reset through /proc/self/clear_refs)
above the resident size once the inputs (hidden states and three output heads) exist: logits, softmax buffers, and the
gradients the loss returns. Those gradients are the same for both variants and cannot be avoided: the student head's
is as large as the head (933 MB here). `memory_ratio` compares the working memory, the peak without them
(`*_working_mb`); `memory_ratio_with_grads` compares the whole peaks. Time is the median of `--repeats` runs after one
warm-up.

Prints one JSON object as its last line. Targets: `memory_ratio` (streamed/naive) ≤ 0.125, `time_ratio` ≤ 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _measure import PeakMemory  # benchmarks/ is the script's folder, so its helper imports directly


def run_variant(variant: str, args) -> dict:
    import torch

    from trl_realign.losses import TeacherHead, naive_realign_divergence, realign_logits, streamed_realign_divergence

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n, h, v, lam = args.tokens, args.hidden, args.vocab, args.realign_lambda
    hidden = {k: torch.randn(n, h, generator=g) for k in ("s", "a", "b")}
    weights = {k: torch.randn(v, h, generator=g) * h**-0.5 for k in ("s", "a", "b")}
    student_hidden = hidden["s"].requires_grad_(True)
    student_weight = weights["s"].requires_grad_(True)

    def step():
        student_hidden.grad = student_weight.grad = None
        if variant == "streamed":
            teachers = [TeacherHead(hidden["b"], weights["b"], None, lam), TeacherHead(hidden["a"], weights["a"], None, 1 - lam)]
            out = streamed_realign_divergence(
                student_hidden, student_weight, None, teachers, divergence=args.divergence,
                token_chunk_size=args.token_chunk_size, vocab_chunk_size=args.vocab_chunk_size,
            )
            loss = out.loss / n
        else:
            with torch.no_grad():
                teacher = realign_logits(hidden["a"] @ weights["a"].T, hidden["b"] @ weights["b"].T, lam)
            student = student_hidden @ student_weight.T
            loss = naive_realign_divergence(student, teacher, divergence=args.divergence).mean()
        loss.backward()
        return loss.item()

    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    loss = step()
    first = time.perf_counter() - start
    peak = memory.peak_mib()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    grads_mb = sum(t.grad.numel() * t.grad.element_size() for t in (student_hidden, student_weight)) / 2**20
    return {"loss": loss, "peak_mb": peak, "grads_mb": grads_mb, "seconds": statistics.median(times) if times else first}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--realign_lambda", type=float, default=2.0)
    parser.add_argument("--divergence", default="reverse_kl")
    parser.add_argument("--token_chunk_size", type=int, default=256)
    parser.add_argument("--vocab_chunk_size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variant", choices=["naive", "streamed"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {}
    for variant in ("naive", "streamed"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True,
                             text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    naive, streamed = results["naive"], results["streamed"]
    working = {name: r["peak_mb"] - r["grads_mb"] for name, r in results.items()}
    memory_ratio = working["streamed"] / working["naive"]
    time_ratio = streamed["seconds"] / naive["seconds"]
    print(json.dumps({
        "naive_peak_mb": round(naive["peak_mb"], 1),
        "streamed_peak_mb": round(streamed["peak_mb"], 1),
        "grads_mb": round(naive["grads_mb"], 1),
        "naive_working_mb": round(working["naive"], 1),
        "streamed_working_mb": round(working["streamed"], 1),
        "memory_ratio_with_grads": round(streamed["peak_mb"] / naive["peak_mb"], 4),
        "naive_s": round(naive["seconds"], 3),
        "streamed_s": round(streamed["seconds"], 3),
        "memory_ratio": round(memory_ratio, 4),
        "time_ratio": round(time_ratio, 4),
        "loss_abs_diff": abs(naive["loss"] - streamed["loss"]),
        "targets": {"memory_ratio": 0.125, "time_ratio": 1.0},
        "targets_met": {"memory_ratio": memory_ratio <= 0.125, "time_ratio": time_ratio <= 1.0},
        "config": {k: v for k, v in vars(args).items() if k != "variant"},
    }))


if __name__ == "__main__":
    main()
