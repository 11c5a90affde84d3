"""Capture a teacher cache and/or take one SGD step of TrRa from it (mode capture, train or capture+train); run alone
or under torch.distributed.run."""

import copy
import sys

import torch
from datasets import Dataset

from trl_realign import TrRaConfig, TrRaTrainer, build_teacher_cache

from trra_one_step import tiny_setup


def main(mode: str, cache: str, output_path: str, per_device_batch: int, deepspeed: str | None = None):
    tokenizer, a, b, rows = tiny_setup()
    args = TrRaConfig(
        output_dir=output_path + ".out", per_device_train_batch_size=per_device_batch, max_steps=1, optim="sgd",
        learning_rate=1.0, lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        seed=0, realign_lambda=2.0, disable_tqdm=True, teacher_cache=cache, per_device_eval_batch_size=3,
        deepspeed=deepspeed,
    )
    student = copy.deepcopy(a).requires_grad_(True)
    if mode.startswith("capture"):
        # Small shards, so that each process writes several
        build_teacher_cache(student, b, args, Dataset.from_list(rows), processing_class=tokenizer, ref_model=a,
                            shard_bytes=1000)
    if mode.endswith("train"):
        trainer = TrRaTrainer(model=student, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer)
        trainer.train()
        # A collective under ZeRO-3 (it gathers the shards): every rank must call it
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if trainer.accelerator.is_main_process:
            torch.save({k: v.detach().cpu() for k, v in state.items()}, output_path)
        trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
