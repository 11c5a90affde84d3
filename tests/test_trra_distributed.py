"""Several processes must give the same update as one process with the whole batch (run in subprocesses)."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from launching import accelerate_zero3_config, free_port, run


SCRIPT = Path(__file__).parent / "scripts" / "trra_one_step.py"


def run_script(args, tmp_path, nproc=1):
    if nproc == 1:
        command = [sys.executable, str(SCRIPT), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={free_port()}", str(SCRIPT), *args]
    run(command, tmp_path)
    return torch.load(args[0])


@pytest.mark.parametrize("deepspeed", [None, "zero3"])
def test_two_processes_match_one_large_batch(tmp_path, deepspeed):
    single = run_script([str(tmp_path / "single.pt"), "4", "1"], tmp_path)
    extra = [str(Path(__file__).parent / "scripts" / "ds_zero3.json")] if deepspeed else []
    distributed = run_script([str(tmp_path / "two.pt"), "2", "1", *extra], tmp_path, nproc=2)
    accumulated = run_script([str(tmp_path / "accum.pt"), "1", "4"], tmp_path)

    from trl_realign.testing import tiny_causal_lm

    initial = tiny_causal_lm("qwen2", seed=0, vocab_size=len(single["lm_head.weight"])).state_dict()
    assert any(not torch.equal(single[k], initial[k]) for k in single)
    for k in single:
        torch.testing.assert_close(distributed[k], single[k], atol=1e-6, rtol=1e-5, msg=k)
        torch.testing.assert_close(accumulated[k], single[k], atol=1e-6, rtol=1e-5, msg=k)


def test_zero3_rank_without_scored_tokens_enters_the_same_collectives(tmp_path):
    # Process 1's batch is all prompt: it must still join the head's all-gather, or process 0 waits forever
    script = Path(__file__).parent / "scripts" / "trra_empty_rank.py"
    output = tmp_path / "empty_rank.pt"
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_zero3_config(tmp_path),
         "--num_processes", "2", "--main_process_port", str(free_port()), str(script), str(output)],
        tmp_path, timeout=300)  # fmt: skip
    saved = torch.load(output)

    # The update is then process 0's alone: one SGD step (lr 1, no clipping) on its batch, in one process
    from trl_realign import TrRaConfig, TrRaTrainer
    from trl_realign.data.tokenizer import build_char_tokenizer
    from trl_realign.testing import tiny_causal_lm

    tokenizer = build_char_tokenizer()
    a = tiny_causal_lm("qwen2", seed=0, vocab_size=len(tokenizer))
    b = tiny_causal_lm("qwen2", seed=1, vocab_size=len(tokenizer))
    args = TrRaConfig(output_dir=str(tmp_path / "single"), use_cpu=True, bf16=False, report_to=[], realign_lambda=2.0)
    trainer = TrRaTrainer(copy.deepcopy(a).requires_grad_(True), ref_model=a, aligned_model=b, args=args,
                          train_dataset=Dataset.from_list([{"prompt": "1+1=", "completion": "2"}]),
                          processing_class=tokenizer)
    trainer.compute_loss(trainer.model, saved["batch"]).backward()
    assert (saved["batch"]["labels"] != -100).any()
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(saved["state"][name], (p - p.grad).detach(), atol=1e-6, rtol=1e-5, msg=name)
