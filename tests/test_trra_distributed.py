"""Several processes must give the same update as one process with the whole batch (run in subprocesses)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).parent / "scripts" / "trra_one_step.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, tmp_path, nproc=1):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    if nproc == 1:
        command = [sys.executable, str(SCRIPT), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={free_port()}", str(SCRIPT), *args]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(args[0])


@pytest.mark.parametrize("deepspeed", [None, "zero3"])
def test_two_processes_match_one_large_batch(tmp_path, deepspeed):
    single = run([str(tmp_path / "single.pt"), "4", "1"], tmp_path)
    extra = [str(Path(__file__).parent / "scripts" / "ds_zero3.json")] if deepspeed else []
    distributed = run([str(tmp_path / "two.pt"), "2", "1", *extra], tmp_path, nproc=2)
    accumulated = run([str(tmp_path / "accum.pt"), "1", "4"], tmp_path)

    from trl_realign.testing import tiny_causal_lm

    initial = tiny_causal_lm("qwen2", seed=0, vocab_size=len(single["lm_head.weight"])).state_dict()
    assert any(not torch.equal(single[k], initial[k]) for k in single)
    for k in single:
        torch.testing.assert_close(distributed[k], single[k], atol=1e-6, rtol=1e-5, msg=k)
        torch.testing.assert_close(accumulated[k], single[k], atol=1e-6, rtol=1e-5, msg=k)
