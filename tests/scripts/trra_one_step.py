"""One SGD step of TrRa on a fixed batch; run alone or under `accelerate launch`. Saves the student's weights."""

import copy
import logging
import sys

import torch
from datasets import Dataset

from trl_realign import TrRaConfig, TrRaTrainer
from trl_realign.data.tokenizer import build_char_tokenizer
from trl_realign.testing import tiny_causal_lm


def tiny_setup():
    """The tokenizer, models A and B, and 8 prompt/completion rows that the scripts here train on."""
    logging.disable(logging.WARNING)
    tokenizer = build_char_tokenizer()
    a = tiny_causal_lm("qwen2", seed=0, vocab_size=len(tokenizer))
    b = tiny_causal_lm("qwen2", seed=1, vocab_size=len(tokenizer))
    # Completions of different lengths, so a wrong per-process normalisation would show
    rows = [{"prompt": f"{i}+{i * 7}=", "completion": str(i + i * 7) * (1 + i % 3)} for i in range(1, 9)]
    return tokenizer, a, b, rows


def one_step_args(output_path: str, per_device_batch: int, accumulation: int = 1, **overrides) -> TrRaConfig:
    """One plain SGD step (lr 1, constant), λ=2, on the CPU: updates any two setups can be compared by."""
    return TrRaConfig(
        output_dir=output_path + ".out", per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to=[], save_strategy="no", seed=0,
        realign_lambda=2.0, disable_tqdm=True, **overrides,
    )


def train_and_save(trainer, output_path: str) -> None:
    """Train, save the student's full weights from the main process, and leave the process group cleanly."""
    trainer.train()
    # A collective under ZeRO-3 (it gathers the shards): every rank must call it
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, output_path)
    trainer.accelerator.wait_for_everyone()


def finish() -> None:
    # Without this, gloo's threads can outlive the interpreter and abort the process at exit
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(output_path: str, per_device_batch: int, accumulation: int, deepspeed: str | None = None):
    tokenizer, a, b, rows = tiny_setup()
    args = one_step_args(output_path, per_device_batch, accumulation, deepspeed=deepspeed)
    trainer = TrRaTrainer(model=copy.deepcopy(a).requires_grad_(True), ref_model=a, aligned_model=b, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    train_and_save(trainer, output_path)
    finish()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
