"""The GPU measurements in one run (bf16, CUDA), for a session that is lent a GPU; `run.sh` beside this calls it.

Sections (each one's failure is recorded in the JSON and the others still run):
- `loss`: the TrRa loss (ours) vs TRL's chunked generalised-JSD kernel (Triton on CUDA), Liger's Triton
  `LigerFusedLinearJSD` and Liger's chunked `LigerFusedLinearJSDLoss`, given the fused teacher as in
  `../loss_vs_peers.py` (whose variant builders this reuses), λ=2 and λ=1: time (CUDA events, median), peak allocated
  memory above the inputs without the returned gradients, and each variant's error against ours in fp32.
- `bf16_grad_path`: our bf16 gradients against fp32, with the number of calls that went through TRL's `_addmm_fp32`
  (the CUDA branch that accumulates bf16 products in fp32 without rounding them first).
- `step`: one optimizer step of SFTTrainer vs TrRaTrainer (λ=2) at DeepSeek-R1-Distill-Qwen-1.5B's shape, bf16 autocast.
- `teacher_cache`: the same step trained from a teacher cache (captured first, bf16 hidden states) vs live TrRa.
- `inra`: greedy decoding at Qwen2.5-0.5B's shape with SDPA: InRa λ=0.5 vs the plain model and vs two models (DeRa).
  Flash attention is refused by `InRaForCausalLM` (`_supports_flash_attn = False`), so it is not measured.
- `onpolicy_vllm`: one on-policy TrRa step (λ=2) at DeepSeek-R1-Distill-Qwen-1.5B's shape, 8 prompts of 512 tokens and
  1024 sampled tokens, with vLLM colocate generation vs transformers' `generate` (`../onpolicy_vllm.py`), bf16
  autocast: `vllm_vs_transformers_step` (target ≤ 0.35) and the sync's share. Needs vLLM in this python (the GPU
  image has none, and its wheel is beyond what a device call carries: the section then records that). `vllm_mode=
  "server"` is not measured: TRL's weight sync to a server is NCCL-only, and the image has no vLLM to serve with. The
  dry run measures the small shape in the vLLM venv (`vllm_plugin/scripts/setup_venv.sh`), vLLM on the CPU.

`--dry-run` runs every code path on the CPU at tiny shapes (a check that the script works, not a measurement).
Writes one JSON file (`--out`) and prints the same object as its last line.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmark scripts whose builders this reuses
import inra_decode  # noqa: E402
import loss_vs_peers  # noqa: E402
import onpolicy_vllm  # noqa: E402
import real_shape_step  # noqa: E402
import teacher_cache  # noqa: E402
from _measure import StepTimer  # noqa: E402
from _shapes import QWEN2_5_0_5B, R1_DISTILL_QWEN_1_5B, SMALL_QWEN2  # noqa: E402


BF16_REL_ERROR = 5e-2  # bf16 logits alone (Liger rounds them) err by ~1e-2; far above this a variant computes something else
BF16_GRAD_REL_ERROR = 1e-2


class Clock:
    """Seconds of a function on `device`: CUDA events on a GPU (its work is asynchronous), the host clock elsewhere."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000

    def reset_peak(self) -> float:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        return 0.0

    def peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None


class SyncedStepTimer(StepTimer):
    """StepTimer that waits for the GPU at both ends of a step, so that the step's kernels are inside its time."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock

    def on_step_begin(self, *args, **kwargs):
        self.clock.sync()
        super().on_step_begin(*args, **kwargs)

    def on_step_end(self, *args, **kwargs):
        self.clock.sync()
        super().on_step_end(*args, **kwargs)


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖ in fp64."""
    value, reference = value.double(), reference.double()
    return ((value - reference).norm() / reference.norm().clamp_min(1e-300)).item()


def free(clock: Clock):
    gc.collect()
    if clock.cuda:
        torch.cuda.empty_cache()


def liger_triton_loss(inputs: dict, lam: float, beta: float):
    from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

    jsd = LigerFusedLinearJSD(jsd_beta=beta)
    w_t = loss_vs_peers.fused_teacher_head(inputs, lam)
    return lambda: jsd(inputs["h_s"], inputs["w_s"], loss_vs_peers.fused_teacher_hidden(inputs, lam), w_t)


def loss_section(args, clock: Clock) -> dict:
    n, v, h = (64, 1000, 32) if args.dry_run else (args.tokens, 151936, 1536)
    inputs = loss_vs_peers.make_inputs(n, h, v, seed=0, device=args.device, dtype=torch.bfloat16)
    reference_inputs = {k: t.detach().float().requires_grad_(t.requires_grad) for k, t in inputs.items()}
    beta = loss_vs_peers.divergence_beta("reverse_kl")
    variants = ["ours", "trl", "liger"] + (["liger_triton"] if clock.cuda else [])
    out = {"tokens": n, "vocab": v, "hidden": h, "dtype": "bfloat16"}
    for setting, lam in loss_vs_peers.SETTINGS.items():
        ref = loss_vs_peers.loss_and_grads(loss_vs_peers.build_loss("ours", reference_inputs, lam), reference_inputs)
        ref = (ref[0], ref[1].clone(), ref[2].clone())
        figures = {}
        for variant in variants:
            try:
                base_mb = clock.reset_peak()
                if variant == "liger_triton":
                    loss_fn = liger_triton_loss(inputs, lam, beta)
                else:
                    loss_fn = loss_vs_peers.build_loss(variant, inputs, lam, "reverse_kl")
                loss, grad_h, grad_w = loss_vs_peers.loss_and_grads(loss_fn, inputs)
                clock.sync()
                grads_mb = (grad_h.numel() * grad_h.element_size() + grad_w.numel() * grad_w.element_size()) / 2**20
                peak = clock.peak_mb()
                errors = {"loss_rel": abs(loss - ref[0]) / abs(ref[0]), "grad_h_rel": rel_error(grad_h, ref[1]),
                          "grad_w_rel": rel_error(grad_w, ref[2])}
                for _ in range(args.warmup):
                    loss_vs_peers.loss_and_grads(loss_fn, inputs)
                seconds = statistics.median(clock.time(lambda: loss_vs_peers.loss_and_grads(loss_fn, inputs))
                                            for _ in range(args.repeats))
                figures[variant] = {"seconds": seconds, **errors,
                                    "working_mb": None if peak is None else peak - base_mb - grads_mb,
                                    "agrees": max(errors.values()) <= BF16_REL_ERROR}
                loss_fn = None  # frees the peer's fused head before the next variant builds its own
            except Exception as error:  # one peer failing must not hide the others' figures
                figures[variant] = {"error": f"{type(error).__name__}: {error}"}
            free(clock)
        ours = figures["ours"]
        peers = {k: f for k, f in figures.items() if k != "ours" and "seconds" in f}
        if "seconds" in ours and peers:
            best = min(peers, key=lambda k: peers[k]["seconds"])
            out[f"{setting}_time_ratio_vs_best_peer"] = ours["seconds"] / peers[best]["seconds"]
            out[f"{setting}_best_peer"] = best
            if ours["working_mb"] is not None:
                out[f"{setting}_memory_ratio_vs_best_peer"] = ours["working_mb"] / min(
                    f["working_mb"] for f in peers.values())
        out[setting] = figures
    return out


def bf16_grad_section(args, clock: Clock) -> dict:
    import trl_realign.losses as losses

    n, v, h = (64, 1000, 32) if args.dry_run else (args.tokens, 151936, 1536)
    inputs = loss_vs_peers.make_inputs(n, h, v, seed=1, device=args.device, dtype=torch.bfloat16)
    reference_inputs = {k: t.detach().float().requires_grad_(t.requires_grad) for k, t in inputs.items()}
    calls = []
    original = losses._addmm_fp32

    def counted(*a):
        calls.append(1)
        return original(*a)

    losses._addmm_fp32 = counted  # counts the calls that take TRL's fp32-accumulating branch
    try:
        _, grad_h, grad_w = loss_vs_peers.loss_and_grads(loss_vs_peers.build_loss("ours", inputs, 2.0), inputs)
    finally:
        losses._addmm_fp32 = original
    _, ref_h, ref_w = loss_vs_peers.loss_and_grads(loss_vs_peers.build_loss("ours", reference_inputs, 2.0),
                                                   reference_inputs)
    errors = {"grad_h_rel": rel_error(grad_h, ref_h), "grad_w_rel": rel_error(grad_w, ref_w)}
    return {**errors, "addmm_fp32_calls": len(calls), "within_bf16_error": max(errors.values()) <= BF16_GRAD_REL_ERROR}


def step_section(args, clock: Clock) -> dict:
    shape = SMALL_QWEN2 if args.dry_run else R1_DISTILL_QWEN_1_5B
    batch, seq_len, warmup, steps = (2, 64, 1, 1) if args.dry_run else (args.step_batch, args.step_seq_len, 2, 4)
    out = {"shape": "small" if args.dry_run else "r1-distill-qwen-1.5b", "batch": batch, "seq_len": seq_len}
    for variant in real_shape_step.VARIANTS:
        timer = SyncedStepTimer(clock)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = real_shape_step.build_trainer(
                variant, shape, tmp, warmup + steps, seq_len, [timer], batch=batch, use_cpu=not clock.cuda,
                bf16=clock.cuda,
            )
            base_mb = clock.reset_peak()
            trainer.train()
        out[f"{variant}_step_s"] = statistics.median(timer.times[warmup:])
        out[f"{variant}_peak_mb"] = clock.peak_mb()
        out[f"{variant}_allocated_before_train_mb"] = base_mb
        del trainer
        free(clock)
    out["trra_vs_sft_step"] = out["trra_step_s"] / out["sft_step_s"]
    return out


def teacher_cache_section(args, clock: Clock) -> dict:
    """TrRa from a teacher cache vs live TrRa, one optimizer step at the 1.5B shape in bf16 (as `step`)."""
    from trl_realign import TrRaTrainer, build_teacher_cache

    shape = SMALL_QWEN2 if args.dry_run else R1_DISTILL_QWEN_1_5B
    batch, seq_len, warmup, steps = (2, 64, 1, 1) if args.dry_run else (args.step_batch, args.step_seq_len, 2, 4)
    rows, vocab = batch * (warmup + steps), shape["vocab_size"]
    device_args = dict(use_cpu=not clock.cuda, bf16=clock.cuda, per_device_train_batch_size=batch,
                       per_device_eval_batch_size=batch)
    out = {"shape": "small" if args.dry_run else "r1-distill-qwen-1.5b", "batch": batch, "seq_len": seq_len}
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        start = time.perf_counter()
        build_teacher_cache(real_shape_step.qwen2_model(shape, seed=0), real_shape_step.qwen2_model(shape, seed=2),
                            teacher_cache.trra_args(tmp, rows, teacher_cache=cache, **device_args),
                            real_shape_step.token_dataset(rows, seq_len, vocab),
                            processing_class=real_shape_step.id_tokenizer(vocab))  # fmt: skip
        clock.sync()
        out["capture_s"] = time.perf_counter() - start
        manifest = json.loads(Path(cache, "manifest.json").read_text())
        out["capture_tokens_per_s"] = manifest["tokens"] / out["capture_s"]
        out["cache_dtype"] = manifest["teachers"]["aligned"]["dtype"]
        free(clock)
        for variant in ("live", "cached"):
            timer = SyncedStepTimer(clock)
            teachers = {} if variant == "cached" else {
                "ref_model": real_shape_step.qwen2_model(shape, seed=0),
                "aligned_model": real_shape_step.qwen2_model(shape, seed=2),
            }
            trainer = TrRaTrainer(model=real_shape_step.qwen2_model(shape, seed=0),
                                  args=teacher_cache.trra_args(os.path.join(tmp, variant), warmup + steps,
                                                               teacher_cache=cache if variant == "cached" else None,
                                                               **device_args),
                                  train_dataset=real_shape_step.token_dataset(rows, seq_len, vocab),
                                  processing_class=real_shape_step.id_tokenizer(vocab), callbacks=[timer],
                                  **teachers)  # fmt: skip
            base_mb = clock.reset_peak()
            trainer.train()
            out[f"{variant}_step_s"] = statistics.median(timer.times[warmup:])
            out[f"{variant}_peak_mb"] = clock.peak_mb()
            out[f"{variant}_allocated_before_train_mb"] = base_mb
            del trainer, teachers
            free(clock)
    out["cached_vs_live_step"] = out["cached_step_s"] / out["live_step_s"]
    return out


def inra_section(args, clock: Clock) -> dict:
    shape = SMALL_QWEN2 if args.dry_run else QWEN2_5_0_5B
    dtype = torch.bfloat16 if clock.cuda else torch.float32
    variants = inra_decode.build_variants("qwen2", dict(shape, attn_implementation="sdpa"), 0.5, args.device, dtype)
    out = {"attention": "sdpa", "dtype": str(dtype).removeprefix("torch."),
           "flash_attention": "not measured: InRaForCausalLM refuses it (_supports_flash_attn = False)",
           **inra_decode.same_greedy_tokens(variants, shape["vocab_size"], 16, args.device)}

    def synced(step):
        def run(ids, cache):
            result = step(ids, cache)
            clock.sync()
            return result
        return run

    timed = {name: synced(variants[name]) for name in ("plain", "inra", "two_model", "inra_lambda0")}
    new_tokens, repeats = (4, 1) if args.dry_run else (128, 3)
    for batch in (1, 8):
        prompt = torch.randint(4, shape["vocab_size"], (batch, 16), generator=torch.Generator().manual_seed(batch))
        tok_s = inra_decode.measure(timed, prompt.to(args.device), new_tokens, repeats)
        out[f"batch{batch}"] = {**{f"{k}_tok_s": t for k, t in tok_s.items()},
                                **{r: tok_s[a] / tok_s[b] for r, (a, b) in inra_decode.RATIOS.items()
                                   if a in tok_s and b in tok_s}}
    return out


def onpolicy_vllm_section(args, clock: Clock) -> dict:
    if args.dry_run:  # the small shape in the vLLM venv, vLLM on the CPU: a check of the path, not a measurement
        figures, _ = onpolicy_vllm.run_in_vllm_venv(["--small", "--warmup", "1", "--steps", "1"], small=True)
        config = onpolicy_vllm.SMALL
    else:
        if importlib.util.find_spec("vllm") is None:
            return {"error": "vLLM is not installed in this python: nothing to measure"}
        config = dict(shape="r1-distill-qwen-1.5b", batch=8, prompt_len=512, completion_len=1024)
        device_args = dict(use_cpu=False, bf16=True, vllm_gpu_memory_utilization=0.25)
        figures = {}
        for variant in onpolicy_vllm.VARIANTS:
            figures[variant] = onpolicy_vllm.measure_step(variant, config, 1, 2, device_args, SyncedStepTimer(clock))
            free(clock)
    with_vllm, with_hf = figures["vllm"], figures["transformers"]
    return {**config, "mode": "colocate", **{f"{name}_{key}": f[key] for name, f in figures.items()
                                             for key in ("step_s", "generation_s")},
            "vllm_sync_s": with_vllm["sync_s"], "sync_share": with_vllm["sync_s"] / with_vllm["step_s"],
            "vllm_vs_transformers_step": with_vllm["step_s"] / with_hf["step_s"]}  # fmt: skip


def targets_met(result: dict) -> dict:
    met = {}
    loss = result.get("loss", {})
    for setting in loss_vs_peers.SETTINGS:
        figures = loss.get(setting, {})
        agree = bool(figures) and all(f.get("agrees", False) for f in figures.values())
        met[f"loss_{setting}_variants_agree"] = agree
        ratio = loss.get(f"{setting}_time_ratio_vs_best_peer")
        met[f"loss_{setting}_time"] = agree and ratio is not None and ratio <= loss_vs_peers.TARGET_TIME[setting]
        memory = loss.get(f"{setting}_memory_ratio_vs_best_peer")
        met[f"loss_{setting}_memory"] = agree and memory is not None and memory <= 1.0
    met["bf16_grad_within_error"] = bool(result.get("bf16_grad_path", {}).get("within_bf16_error"))
    met["trra_vs_sft_step"] = result.get("step", {}).get("trra_vs_sft_step", float("inf")) <= 1.8
    met["cached_vs_live_step"] = result.get("teacher_cache", {}).get("cached_vs_live_step", float("inf")) <= 0.75
    met["onpolicy_vllm_vs_transformers_step"] = (
        result.get("onpolicy_vllm", {}).get("vllm_vs_transformers_step", float("inf")) <= 0.35
    )
    for batch in (1, 8):
        figures = result.get("inra", {}).get(f"batch{batch}", {})
        for key, target in (("inra_vs_plain", 0.6), ("inra_vs_two_model", 1.3)):
            met[f"{key}_batch{batch}"] = figures.get(key, 0.0) >= target
    return met


SECTIONS = {"loss": loss_section, "bf16_grad_path": bf16_grad_section, "step": step_section,
            "teacher_cache": teacher_cache_section, "inra": inra_section, "onpolicy_vllm": onpolicy_vllm_section}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: exercises every code path")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of the loss comparison")
    parser.add_argument("--step_batch", type=int, default=4)
    parser.add_argument("--step_seq_len", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.dry_run:
        args.device, args.warmup, args.repeats = "cpu", 0, 1
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run to check the script on a CPU")
    else:
        args.device = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 references stay fp32
    clock = Clock(args.device)
    result = {"dry_run": args.dry_run}
    for name in args.sections:
        start = time.perf_counter()
        try:
            result[name] = SECTIONS[name](args, clock)
        except Exception as error:
            result[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        result[name]["wall_s"] = time.perf_counter() - start
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    import transformers
    import trl

    result.update(
        targets_met=targets_met(result),
        machine=dict(device=torch.cuda.get_device_name() if clock.cuda else platform.processor() or "cpu",
                     torch=torch.__version__, cuda=torch.version.cuda, transformers=transformers.__version__,
                     trl=trl.__version__, python=platform.python_version(), load_average_1min=os.getloadavg()[0]),
    )
    text = json.dumps(result, default=float)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
