"""One SGD step of TrRa under `accelerate launch` in which process 1's batch has no scored token.

Usage: python trra_empty_rank.py OUTPUT.pt. Saves the student's weights after the step and process 0's batch.
"""

import copy
import sys

import torch
from datasets import Dataset
from trra_one_step import tiny_setup  # the script's folder is on the path

from trl_realign import TrRaConfig, TrRaTrainer


class EmptyOnRankOne(TrRaTrainer):
    def _get_num_items_in_batch(self, batch_samples, device):
        # Masked before the scored tokens are counted (across processes), as a batch of prompts alone would be
        if self.accelerator.process_index == 1:
            for batch in batch_samples:
                batch["labels"] = torch.full_like(batch["labels"], -100)
        else:
            self.rank0_batch = {k: v.detach().cpu() for k, v in batch_samples[0].items() if isinstance(v, torch.Tensor)}
        return super()._get_num_items_in_batch(batch_samples, device)


def main(output_path: str):
    tokenizer, a, b, rows = tiny_setup()
    args = TrRaConfig(
        output_dir=output_path + ".out", per_device_train_batch_size=2, max_steps=1, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", max_grad_norm=0.0, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        seed=0, realign_lambda=2.0, disable_tqdm=True,
    )
    trainer = EmptyOnRankOne(model=copy.deepcopy(a).requires_grad_(True), ref_model=a, aligned_model=b, args=args,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # a collective under ZeRO-3
    if trainer.accelerator.is_main_process:
        torch.save({"state": {k: v.detach().cpu() for k, v in state.items()}, "batch": trainer.rank0_batch}, output_path)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
