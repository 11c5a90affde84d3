"""One optimizer step of TrRaTrainer vs SFTTrainer on the same student, data and batch (CPU, fp32).

Prints one JSON object as its last line. Target: `ratio` = trra_step_s / sft_step_s ≤ 1.8 (the two teacher forwards
cost about two thirds of a training step).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import tempfile

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from _measure import StepTimer  # benchmarks/ is the script's folder, so its helper imports directly
from trl_realign import TrRaConfig, TrRaTrainer
from trl_realign.data.tokenizer import build_char_tokenizer
from trl_realign.testing import tiny_causal_lm


def dataset(n: int, prompt_len: int, completion_len: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    chars = "0123456789+=abcdefghijklmnopqrstuvwxyz "
    def text(length):
        return "".join(chars[i] for i in torch.randint(len(chars), (length,), generator=g).tolist())
    return Dataset.from_list([{"prompt": text(prompt_len), "completion": text(completion_len)} for _ in range(n)])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--completion_len", type=int, default=192)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)

    tokenizer = build_char_tokenizer()
    # TrRa scores every token the tokenizer can produce: give it the full vocabulary, as a real tokenizer would
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(args.vocab - len(tokenizer))])
    model_kwargs = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        max_position_embeddings=1024)
    student = tiny_causal_lm("qwen2", seed=0, **model_kwargs)
    aligned = tiny_causal_lm("qwen2", seed=1, **model_kwargs)
    data = dataset(args.batch * (args.steps + 2), args.prompt_len, args.completion_len, seed=0)
    common = dict(per_device_train_batch_size=args.batch, max_steps=args.steps + 2, learning_rate=1e-5,
                  use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_strategy="no",
                  disable_tqdm=True, seed=0, max_length=None)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("sft", "trra"):
            timer = StepTimer()
            if name == "sft":
                trainer = SFTTrainer(model=copy.deepcopy(student), args=SFTConfig(output_dir=tmp, **common),
                                     train_dataset=data, processing_class=tokenizer, callbacks=[timer])
            else:
                trainer = TrRaTrainer(model=copy.deepcopy(student), ref_model=copy.deepcopy(student),
                                      aligned_model=aligned,
                                      args=TrRaConfig(output_dir=tmp, realign_lambda=2.0, **common),
                                      train_dataset=data, processing_class=tokenizer, callbacks=[timer])
            trainer.train()
            results[f"{name}_step_s"] = statistics.median(timer.times[2:])
    ratio = results["trra_step_s"] / results["sft_step_s"]
    results.update(
        ratio=ratio,
        targets={"ratio": 1.8},
        targets_met={"ratio": ratio <= 1.8},
        config={**vars(args), "tokens_per_step": args.batch * (args.prompt_len + args.completion_len),
                "threads": torch.get_num_threads()},
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
