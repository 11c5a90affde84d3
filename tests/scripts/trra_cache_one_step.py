"""Capture a teacher cache and/or take one SGD step of TrRa from it (mode capture, train or capture+train); run alone
or under torch.distributed.run."""

import copy
import sys

from datasets import Dataset

from trl_realign import TrRaTrainer, build_teacher_cache

from trra_one_step import finish, one_step_args, tiny_setup, train_and_save


def main(mode: str, cache: str, output_path: str, per_device_batch: int, deepspeed: str | None = None):
    tokenizer, a, b, rows = tiny_setup()
    args = one_step_args(output_path, per_device_batch, teacher_cache=cache, per_device_eval_batch_size=3,
                         deepspeed=deepspeed)
    student = copy.deepcopy(a).requires_grad_(True)
    if mode.startswith("capture"):
        # Small shards, so that each process writes several
        build_teacher_cache(student, b, args, Dataset.from_list(rows), processing_class=tokenizer, ref_model=a,
                            shard_bytes=1000)
    if mode.endswith("train"):
        trainer = TrRaTrainer(model=student, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer)
        train_and_save(trainer, output_path)
    finish()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
