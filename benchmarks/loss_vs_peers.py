"""The TrRa loss against the distillation losses users already have, forward + backward (fp32, CPU).

TrRa's teacher is softmax(λ·z_B + (1−λ)·z_A). The peers take one teacher head, so they get the fused teacher the only
way they can (library-notes: two linear heads mix exactly as one): the head [λ·W_B | (1−λ)·W_A] ([V, 2H], built once,
as a trainer with frozen teachers would) and, every step, the hidden states [h_B ; h_A] ([N, 2H]).
- `ours`: `trl_realign.streamed_realign_divergence` with the two heads as they are (token chunk 256, whole vocabulary).
- `trl`: TRL's chunked generalised-JSD kernel through `trl.trainer.distillation_trainer._chunked_divergence_loss`, the
  function `DistillationTrainer` calls (`ChunkedDivergenceFunction`, pure torch tiles on CPU).
- `liger`: Liger-Kernel's `LigerFusedLinearJSDLoss` (torch, chunks of tokens over the whole vocabulary), distillation
  loss only (`weight_hard_loss=0`), its default chunk of 1,024 tokens; `--liger_compiled` wraps its chunk in
  torch.compile as Liger does by default on GPU.
Two settings: λ=2 (two teachers) and λ=1 (one teacher, z_B alone: no concatenation for anyone).

Each variant runs in its own subprocess. Peak memory is the peak resident set size above the resident size once the
inputs (hidden states, the three heads) exist, over the first step (which builds the peers' fused head); working memory
is that minus the gradients every variant returns (the student head's is as large as the head). Time: median of
`--repeats` steps after that first one. Every variant's loss and gradients are compared with ours: if any disagrees
beyond `--rtol`, the comparison is void and every target is false.

Prints one JSON object as its last line. Targets: ours ≤ 0.8× the best peer's time with two teachers, ≤ 1.0× with one;
our peak working memory ≤ the best peer's in both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from _measure import PeakMemory  # benchmarks/ is the script's folder, so its helper imports directly
from trl_realign.losses import TeacherHead, resolve_divergence, streamed_realign_divergence


SETTINGS = {"two_teachers": 2.0, "one_teacher": 1.0}
PEERS = ("trl", "liger")
TARGET_TIME = {"two_teachers": 0.8, "one_teacher": 1.0}


def divergence_beta(divergence: str) -> float:
    """The generalised-JSD weight β of `divergence` (1 reverse KL, 0 forward KL), as the package's losses read it."""
    return resolve_divergence(divergence)[1]


def make_inputs(tokens: int, hidden: int, vocab: int, seed: int = 0, device="cpu", dtype=torch.float32) -> dict:
    """Hidden states and heads of the student (s), the reference (a) and the aligned model (b)."""
    g = torch.Generator(device).manual_seed(seed)
    inputs = {f"h_{k}": torch.randn(tokens, hidden, generator=g, device=device).to(dtype) for k in "sab"}
    inputs.update({f"w_{k}": (torch.randn(vocab, hidden, generator=g, device=device) * hidden**-0.5).to(dtype)
                   for k in "sab"})
    inputs["h_s"].requires_grad_(True)
    inputs["w_s"].requires_grad_(True)
    return inputs


def fused_teacher_head(inputs: dict, lam: float) -> torch.Tensor:
    """The one [V, 2H] head (or W_B itself at λ=1) that gives a single-teacher loss the fused TrRa teacher."""
    if lam == 1.0:
        return inputs["w_b"]
    return torch.cat([lam * inputs["w_b"], (1 - lam) * inputs["w_a"]], dim=1)


def fused_teacher_hidden(inputs: dict, lam: float) -> torch.Tensor:
    return inputs["h_b"] if lam == 1.0 else torch.cat([inputs["h_b"], inputs["h_a"]], dim=1)


def build_loss(variant: str, inputs: dict, lam: float, divergence: str = "reverse_kl", liger_compiled: bool = False,
               liger_chunk_size: int = 1024, token_chunk_size: int = 256):
    """
    A function computing `variant`'s loss, mean over tokens, differentiable in the student's hidden states and head.
    Setup a trainer does once (the peers' fused head) happens here, per-step work (concatenating hidden states) inside.
    """
    h_s, w_s = inputs["h_s"], inputs["w_s"]
    n = h_s.shape[0]
    beta = divergence_beta(divergence)
    if variant == "ours":
        def loss():
            teachers = [TeacherHead(inputs["h_b"], inputs["w_b"], None, lam)]
            if lam != 1.0:
                teachers.append(TeacherHead(inputs["h_a"], inputs["w_a"], None, 1 - lam))
            out = streamed_realign_divergence(h_s, w_s, None, teachers, divergence=divergence,
                                              token_chunk_size=token_chunk_size)
            return out.loss / n
        return loss
    w_t = fused_teacher_head(inputs, lam)
    if variant == "trl":
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        mask = torch.ones(1, n, dtype=torch.long, device=h_s.device)

        def loss():
            h_t = fused_teacher_hidden(inputs, lam)
            return _chunked_divergence_loss(h_s[None], h_t[None], w_s, w_t, mask, beta=beta)[0]
        return loss
    if variant == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta,
                                        compiled=liger_compiled, chunk_size=liger_chunk_size)
        labels = torch.zeros(n, dtype=torch.long, device=h_s.device)  # no token ignored; labels only feed the (disabled) hard loss

        def loss():
            return liger(h_s, w_s, fused_teacher_hidden(inputs, lam), w_t, labels)
        return loss
    raise ValueError(f"unknown variant {variant!r}")


def loss_and_grads(loss_fn, inputs: dict) -> tuple[float, torch.Tensor, torch.Tensor]:
    inputs["h_s"].grad = inputs["w_s"].grad = None
    loss = loss_fn()
    loss.backward()
    return loss.item(), inputs["h_s"].grad, inputs["w_s"].grad


def run_variant(args) -> dict:
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.tokens, args.hidden, args.vocab)
    lam = SETTINGS[args.setting]
    memory = PeakMemory()
    memory.start()
    loss_fn = build_loss(args.variant, inputs, lam, args.divergence, args.liger_compiled, args.liger_chunk_size,
                         args.token_chunk_size)
    start = time.perf_counter()
    loss, grad_h, grad_w = loss_and_grads(loss_fn, inputs)
    first = time.perf_counter() - start
    peak = memory.peak_mib()
    grads_mb = (grad_h.numel() + grad_w.numel()) * grad_h.element_size() / 2**20
    torch.save({"loss": loss, "grad_h": grad_h, "grad_w": grad_w}, args.save)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        loss_and_grads(loss_fn, inputs)
        times.append(time.perf_counter() - start)
    return {"peak_mb": peak, "working_mb": peak - grads_mb, "grads_mb": grads_mb, "first_s": first,
            "seconds": statistics.median(times) if times else first}


def max_differences(ours: dict, peer: dict) -> dict:
    """Largest differences of the loss and of each gradient, relative to the largest magnitude of ours."""
    loss = abs(ours["loss"] - peer["loss"]) / max(abs(ours["loss"]), 1e-30)
    grads = {k: ((ours[k] - peer[k]).abs().max() / ours[k].abs().max().clamp_min(1e-30)).item()
             for k in ("grad_h", "grad_w")}
    return {"loss_rel": loss, **{f"{k}_rel": v for k, v in grads.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="256 tokens, vocab 8,192, hidden 64: seconds, for checking")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--divergence", default="reverse_kl")
    parser.add_argument("--token_chunk_size", type=int, default=256)
    parser.add_argument("--liger_chunk_size", type=int, default=1024)
    parser.add_argument("--liger_compiled", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        args.tokens, args.vocab, args.hidden = 256, 8192, 64

    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    load_before = os.getloadavg()[0]
    result, figures, agree = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in SETTINGS:
            saved = {}
            for variant in ("ours", *PEERS):
                saved[variant] = os.path.join(tmp, f"{setting}_{variant}.pt")
                command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--setting", setting,
                           "--save", saved[variant]]
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{setting}/{variant} failed:\n{out.stderr[-4000:]}")
                figures[setting, variant] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{setting} {variant}: {figures[setting, variant]}", file=sys.stderr, flush=True)
            ours = torch.load(saved["ours"])
            for peer in PEERS:
                agree[setting, peer] = max_differences(ours, torch.load(saved[peer]))
                os.remove(saved[peer])
    all_agree = all(v <= args.rtol for d in agree.values() for v in d.values())
    met = {}
    for setting in SETTINGS:
        ours = figures[setting, "ours"]
        result[f"{setting}_ours_s"] = round(ours["seconds"], 3)
        result[f"{setting}_ours_working_mb"] = round(ours["working_mb"], 1)
        result[f"{setting}_ours_peak_mb"] = round(ours["peak_mb"], 1)
        for peer in PEERS:
            f = figures[setting, peer]
            result[f"{setting}_{peer}_s"] = round(f["seconds"], 3)
            result[f"{setting}_{peer}_working_mb"] = round(f["working_mb"], 1)
            result[f"{setting}_{peer}_peak_mb"] = round(f["peak_mb"], 1)
            result[f"{setting}_time_ratio_vs_{peer}"] = round(ours["seconds"] / f["seconds"], 4)
            result[f"{setting}_memory_ratio_vs_{peer}"] = round(ours["working_mb"] / f["working_mb"], 4)
            result.update({f"{setting}_{peer}_{k}": v for k, v in agree[setting, peer].items()})
        best_time = min(figures[setting, p]["seconds"] for p in PEERS)
        best_memory = min(figures[setting, p]["working_mb"] for p in PEERS)
        result[f"{setting}_time_ratio_vs_best_peer"] = round(ours["seconds"] / best_time, 4)
        result[f"{setting}_memory_ratio_vs_best_peer"] = round(ours["working_mb"] / best_memory, 4)
        met[f"{setting}_time"] = all_agree and ours["seconds"] <= TARGET_TIME[setting] * best_time
        met[f"{setting}_memory"] = all_agree and ours["working_mb"] <= best_memory
    result.update(
        grads_mb=round(figures["two_teachers", "ours"]["grads_mb"], 1),
        variants_agree=all_agree,
        targets={**{f"{s}_time_ratio_vs_best_peer": TARGET_TIME[s] for s in SETTINGS},
                 **{f"{s}_memory_ratio_vs_best_peer": 1.0 for s in SETTINGS}},
        targets_met=met,
        config={k: v for k, v in vars(args).items() if k not in ("variant", "setting", "save")},
        machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                     load_average_1min_before=round(load_before, 2),
                     load_average_1min_after=round(os.getloadavg()[0], 2)),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
