"""
One SGD step of on-policy TrRa with greedy generation (the completions then do not depend on how the batch is split
across processes); run alone or under torchrun. Saves the student's weights and the step's logged metrics.
"""

import copy
import json
import logging
import sys

import torch
from datasets import Dataset

from trl_realign import OnPolicyTrRaConfig, OnPolicyTrRaTrainer
from trl_realign.data.tokenizer import build_char_tokenizer
from trl_realign.testing import tiny_causal_lm


def main(output_path: str, per_device_batch: int, deepspeed: str | None = None):
    logging.disable(logging.WARNING)
    tokenizer = build_char_tokenizer()
    a = tiny_causal_lm("qwen2", seed=0, vocab_size=len(tokenizer))
    b = tiny_causal_lm("qwen2", seed=1, vocab_size=len(tokenizer))
    rows = [{"prompt": f"{i}+{i * 7}="} for i in range(1, 5)]
    args = OnPolicyTrRaConfig(
        output_dir=output_path + ".out", per_device_train_batch_size=per_device_batch, max_steps=1, optim="sgd",
        learning_rate=1.0, lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        seed=0, realign_lambda=2.0, deepspeed=deepspeed, disable_tqdm=True, max_completion_length=8,
        generation_kwargs={"do_sample": False}, logging_steps=1,
    )  # fmt: skip
    trainer = OnPolicyTrRaTrainer(model=copy.deepcopy(a).requires_grad_(True), ref_model=a, aligned_model=b, args=args,
                                  train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    # A collective under ZeRO-3 (it gathers the shards): every rank must call it
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, output_path)
        with open(output_path + ".json", "w") as f:
            json.dump(trainer.state.log_history[0], f)
    trainer.accelerator.wait_for_everyone()
    # Without this, gloo's threads can outlive the interpreter and abort the process at exit
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
