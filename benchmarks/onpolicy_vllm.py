"""
One on-policy TrRa step with vLLM generation (`use_vllm=True, vllm_mode="colocate"`) vs the same step with
transformers' `generate`, at Qwen2.5-0.5B's shape (random weights, fp32, CPU).

Run from the main environment: `python benchmarks/onpolicy_vllm.py` (`--small` for a check in about a minute). The
colocated engine lives in the trainer's process, so both variants run in the vLLM venv (found or created by
`vllm_plugin/scripts/setup_venv.sh`, as the plugin tests do; `TRL_REALIGN_VLLM_VENV` picks it), each in its own
subprocess, with the repository on `PYTHONPATH`. The step is `real_shape_step.py`'s on-policy TrRa step (λ=2, the
student and both teachers of the shape): 8 prompts of 512 tokens, 256 sampled tokens each, the length fixed
(`min_tokens` / `min_new_tokens`) so that both variants train on as many tokens. vLLM runs as TRL starts it (compiled,
as on CPU by default; `--small` runs it eagerly); its KV cache is `VLLM_CPU_KVCACHE_SPACE` GiB (default 2).

Prints one JSON object as its last line:
- `vllm_vs_transformers_step`: the step with vLLM generation over the step with transformers' (target ≤ 1.05 on CPU,
  where vLLM decodes these 8 × 256 tokens barely faster than `generate`; on a GPU the GPU check's target is ≤ 0.35);
- `sync_share`: the weight sync into vLLM (every step: TRL pushes all weights) over the vLLM step (target ≤ 0.1);
- `generation_share` of each variant's step (the sync excluded), the CPU model and the load average; `targets_met`.
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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_VENV = os.path.join(REPO, "vllm_plugin", "scripts", "setup_venv.sh")
VARIANTS = ("transformers", "vllm")
TARGETS = {"vllm_vs_transformers_step": 1.05, "sync_share": 0.1}
FULL = dict(shape="qwen2.5-0.5b", batch=8, prompt_len=512, completion_len=256)
SMALL = dict(shape="small", batch=8, prompt_len=64, completion_len=32)


def shape_of(name: str) -> dict:
    from _shapes import SHAPES

    if name == "small":  # vLLM's CPU attention has no kernel for the small shape's head_dim of 16: 32 here
        return dict(SHAPES["small"], hidden_size=128, intermediate_size=256)
    return SHAPES[name]


class SyncTimer:
    """Wall time of every weight sync into the colocated engine (TRL's, or trl-realign's reload on vLLM's CPU)."""

    def __init__(self, trainer):
        from trl_realign.trainers import onpolicy_trra_trainer

        self.times = []
        self._wrap(onpolicy_trra_trainer, "reload_colocated_weights")
        self._wrap(trainer.vllm_generation, "sync_weights")

    def _wrap(self, owner, name):
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.times.append(time.perf_counter() - start)

        setattr(owner, name, timed)


def onpolicy_trainer(variant: str, config: dict, output_dir: str, steps: int, callbacks, device_args: dict):
    """`real_shape_step.py`'s on-policy TrRa trainer generating with `variant`; `device_args`: a GPU's (bf16, cuda)."""
    import real_shape_step

    completion = config["completion_len"]
    overrides = dict(max_completion_length=completion, **device_args)
    if variant == "vllm":
        overrides.update(use_vllm=True, vllm_mode="colocate", generation_kwargs={"min_tokens": completion},
                         vllm_max_model_length=config["prompt_len"] + completion + 8)  # fmt: skip
    else:
        overrides.update(generation_kwargs={"min_new_tokens": completion})
    # real_shape_step gives the first half of `seq_len` tokens as the prompt
    return real_shape_step.build_trainer("onpolicy_trra", shape_of(config["shape"]), output_dir, steps,
                                         2 * config["prompt_len"], list(callbacks), batch=config["batch"],
                                         **overrides)  # fmt: skip


def measure_step(variant: str, config: dict, warmup: int, steps: int, device_args: dict | None = None, timer=None):
    """Median step, generation and sync seconds of `variant` after `warmup` steps (`timer`: a `StepTimer` to use)."""
    from _measure import GenerationTimer, StepTimer

    timer = timer or StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = onpolicy_trainer(variant, config, tmp, warmup + steps, [timer], device_args or {})
        generation = GenerationTimer(trainer)
        sync = SyncTimer(trainer) if variant == "vllm" else None
        trainer.train()
    sync_times = sync.times if sync is not None else [0.0] * len(generation.times)
    return {
        "completion_tokens": generation.tokens,  # per step: the same in both variants, or the comparison is unfair
        "step_s": statistics.median(timer.times[warmup:]),
        # the sync runs inside the generation call: the generation time is without it
        "generation_s": statistics.median(g - s for g, s in zip(generation.times[warmup:], sync_times[warmup:])),
        "sync_s": statistics.median(sync_times[warmup:]),
        "step_times": [round(t, 3) for t in timer.times],
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def vllm_venv_python() -> str:
    result = subprocess.run(["bash", SETUP_VENV], check=True, stdout=subprocess.PIPE, text=True)
    return result.stdout.strip().splitlines()[-1]


def run_in_vllm_venv(argv: list[str], small: bool) -> tuple[dict, dict]:
    """Each variant's figures, measured by this script (with `argv`) in the vLLM venv, and the environment used."""
    python = vllm_venv_python()
    env = {**os.environ, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_WAIT_POLICY": "PASSIVE"}  # fmt: skip
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if small:
        env["VLLM_CPU_CI_ENV"] = "1"  # vLLM's CPU CI setting: dynamo + eager instead of inductor (minutes)
    figures = {}
    for variant in VARIANTS:
        out = subprocess.run([python, os.path.abspath(__file__), *argv, "--variant", variant], capture_output=True,
                             text=True, env=env)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{out.stderr[-4000:]}")
        figures[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{variant}: {figures[variant]}", file=sys.stderr, flush=True)
    return figures, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer model, short sequences, eager vLLM: a check")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = SMALL if args.small else FULL

    if args.variant:  # in the vLLM venv
        import torch

        torch.set_num_threads(args.threads)
        logging.disable(logging.WARNING)
        print(json.dumps(measure_step(args.variant, config, args.warmup, args.steps)))
        return

    load_before = os.getloadavg()[0]
    figures, env = run_in_vllm_venv(sys.argv[1:], small=args.small)
    hf, vllm = figures["transformers"], figures["vllm"]
    ratio = vllm["step_s"] / hf["step_s"]
    sync_share = vllm["sync_s"] / vllm["step_s"]
    print(json.dumps({
        "vllm_vs_transformers_step": round(ratio, 4),
        "sync_share": round(sync_share, 4),
        "generation_share": {name: round(f["generation_s"] / f["step_s"], 4) for name, f in figures.items()},
        **{f"{name}_{key}": round(f[key], 3) for name, f in figures.items() for key in ("step_s", "generation_s")},
        "vllm_sync_s": round(vllm["sync_s"], 3),
        "completion_tokens": {name: f["completion_tokens"] for name, f in figures.items()},
        "step_times": {name: f["step_times"] for name, f in figures.items()},
        "targets": TARGETS,
        "targets_met": {"vllm_vs_transformers_step": ratio <= TARGETS["vllm_vs_transformers_step"],
                        "sync_share": sync_share <= TARGETS["sync_share"]},
        "config": {**config, "warmup": args.warmup, "steps": args.steps, "threads": args.threads, "dtype": "float32",
                   "realign_lambda": 2.0, "vllm_compiled": not args.small,
                   "vllm_cpu_kvcache_gib": env["VLLM_CPU_KVCACHE_SPACE"]},
        "machine": dict(cpu=cpu_model(), cores=os.cpu_count(), load_average_1min_before=round(load_before, 2),
                        load_average_1min_after=round(os.getloadavg()[0], 2)),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
