"""Launching the package's scripts in subprocesses for the multi-process tests (imported by the test modules beside it)."""

import json
import os
import socket
import subprocess


# ZeRO-3 with every parameter partitioned, however small (the default threshold keeps tiny tensors whole)
ZERO3 = {
    "zero_optimization": {
        "stage": 3, "stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": True,
    },
    "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    return env


def run(command, cwd, timeout: float = 600):
    """Run `command`; a non-zero exit, or a hang past `timeout` seconds (a deadlocked collective), fails the test."""
    try:
        result = subprocess.run(command, env=environment(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr or ""
        raise AssertionError(f"{command[:4]}... did not finish within {timeout} s (a hang?):\n{stderr[-4000:]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return result


def accelerate_zero3_config(tmp_path) -> str:
    """An accelerate config file for DeepSpeed ZeRO-3 with two CPU processes, written under `tmp_path`."""
    (tmp_path / "ds_zero3.json").write_text(json.dumps(ZERO3))
    config = tmp_path / "accelerate_zero3.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
        f"deepspeed_config:\n  deepspeed_config_file: {tmp_path / 'ds_zero3.json'}\n  zero3_init_flag: true\n"
        "num_machines: 1\nnum_processes: 2\nmachine_rank: 0\nuse_cpu: true\n"
    )
    return str(config)
