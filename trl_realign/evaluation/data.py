"""Evaluation data: a hub dataset, a local file or folder, or a `datasets.Dataset`; prompts formatted for the model."""

from __future__ import annotations

import os
from collections.abc import Sequence

from datasets import Dataset, DatasetDict

from ..data.loading import load_dataset_source


def load_eval_dataset(source, config_name: str | None = None, split: str = "test") -> Dataset:
    """
    The evaluation set from a `datasets.Dataset` (or a `DatasetDict`, whose `split` is taken), or from anything
    [`~trl_realign.data.loading.load_dataset_source`] reads: a hub id with an optional configuration, a local folder,
    or a local `.json`/`.jsonl`/`.parquet`/`.csv` file (whose only split is used whatever `split` says).
    """
    if source is None:
        raise ValueError("No evaluation data: set `dataset_name` (a hub id or a local file) or pass `dataset=`.")
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        return _split(source, split, "the DatasetDict")
    if not isinstance(source, str):
        raise TypeError(f"The dataset must be a hub id, a path or a `datasets.Dataset`, got {type(source).__name__}.")
    data = load_dataset_source(source, config_name)
    if os.path.isfile(os.path.expanduser(source)):
        return data["train"]  # a data file has no splits of its own
    return _split(data, split, source)


def _split(data: DatasetDict, split: str, name: str) -> Dataset:
    if split not in data:
        raise ValueError(f"{name} has no split {split!r} (splits: {list(data)}); set `dataset_split`.")
    return data[split]


def build_prompts(raw_prompts: Sequence, tokenizer, args) -> list[str]:
    """
    The text fed to the model for each prompt.

    A text prompt becomes the user turn `args.prompt_template` with `{prompt}` replaced (after the optional system
    turn); a prompt that is already a list of chat messages is used as it is. With `args.use_chat_template` the turns
    go through the tokenizer's chat template with the generation prompt appended; without it a text prompt is the
    filled template alone.
    """
    if args.use_chat_template and tokenizer.chat_template is None:
        raise ValueError(
            "The tokenizer has no chat template; set `use_chat_template=False` to feed the prompt text as it is."
        )
    if not args.use_chat_template and args.system_prompt is not None:
        raise ValueError("`system_prompt` needs the chat template; set `use_chat_template=True` or drop it.")
    prompts = []
    for raw in raw_prompts:
        if isinstance(raw, list):
            if not args.use_chat_template:
                raise ValueError("The prompts are chat messages; they need `use_chat_template=True`.")
            messages = raw
        else:
            text = args.prompt_template.replace("{prompt}", str(raw))
            if not args.use_chat_template:
                prompts.append(text)
                continue
            messages = [{"role": "user", "content": text}]
            if args.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": args.system_prompt})
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return prompts
