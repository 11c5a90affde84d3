"""`trl-realign generate`: generate with an InRa model at one or several λ (one batch holds every λ)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass
class GenerateArguments:
    """
    Options of `trl-realign generate`. The model is an expanded checkpoint (from `trl-realign expand` or a
    layer-adapter trainer), a plain L+n checkpoint with `--num_adapters n` (the paper's released models), or a base
    model plus an adapter-only artifact (`--adapter_path`).
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Expanded checkpoint, plain L+n checkpoint, or the base (--adapter_path)."}
    )
    adapter_path: str | None = field(default=None, metadata={"help": "Adapter-only artifact for the base model."})
    num_adapters: int | None = field(
        default=None, metadata={"help": "Number of adapter layers of a checkpoint without the layer_adapter marker."}
    )
    realign_lambda: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "λ values: 0 is the original model, 1 the adapter-aligned one, others interpolate or "
                  "extrapolate. Every prompt is generated at every λ."},
    )
    prompt: list[str] | None = field(default=None, metadata={"help": "Prompt(s) to complete."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "File of prompts: .txt (one per line) or .jsonl with a `prompt` field."}
    )
    chat_template: bool = field(default=True, metadata={"help": "Wrap each prompt as a user turn (chat template)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum number of generated tokens."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (True) or decode greedily (False)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with --do_sample)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass (with --do_sample)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (with --do_sample); 0 disables it."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: no beam search)."})
    batch_size: int = field(default=8, metadata={"help": "Rows (prompt × λ pairs) per generate call."})
    seed: int = field(default=0, metadata={"help": "Random seed (sampling)."})
    dtype: str = field(default="auto", metadata={"help": "dtype of the weights ('auto', 'bfloat16', 'float32', ...)."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    output_file: str | None = field(
        default=None, metadata={"help": "Write one JSON line per (prompt, λ): prompt, realign_lambda, completion, "
                                "num_tokens (up to and including the first EOS, as `trl-realign eval`), finished "
                                "(ended in EOS). Printed to stdout when unset."},
    )


def make_parser(prog: str | None = "trl-realign generate"):
    from trl import TrlParser

    return TrlParser((GenerateArguments,), prog=prog, description=__doc__)


def check(args: GenerateArguments) -> None:
    from .errors import MissingPathError, UsageError
    from .parsing import check_model_arg

    check_model_arg(args.model_name_or_path, "generate", "the InRa model")
    if args.adapter_path is not None and not os.path.isdir(args.adapter_path):
        raise MissingPathError(
            f"adapter folder {args.adapter_path!r} does not exist", "pass the folder a layer-adapter trainer wrote"
        )
    if (args.prompt is None) == (args.prompts_file is None):
        raise UsageError(
            "`trl-realign generate` needs its prompts from exactly one of `--prompt` and `--prompts_file`",
            "pass `--prompt TEXT ...` or `--prompts_file FILE`",
        )
    if args.prompts_file is not None and not os.path.isfile(args.prompts_file):
        raise MissingPathError(f"prompts file {args.prompts_file!r} not found", "pass an existing .txt or .jsonl file")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise UsageError("`batch_size` and `max_new_tokens` must be positive", "pass values of 1 or more")
    if args.do_sample and args.temperature <= 0:
        raise UsageError(
            f"`--do_sample` needs `--temperature` > 0, got {args.temperature}",
            "raise `--temperature`, or drop `--do_sample` for greedy decoding",
        )


def read_prompts(args: GenerateArguments) -> list[str]:
    if args.prompt is not None:
        return list(args.prompt)
    with open(args.prompts_file) as f:
        if args.prompts_file.endswith(".jsonl"):
            return [json.loads(line)["prompt"] for line in f if line.strip()]
        return [line.rstrip("\n") for line in f if line.strip()]


def load_inra(args: GenerateArguments):
    from ..modeling.inra import InRaForCausalLM

    if args.adapter_path is not None:
        return InRaForCausalLM.from_base_and_adapter(args.model_name_or_path, args.adapter_path, dtype=args.dtype)
    return InRaForCausalLM.from_pretrained(args.model_name_or_path, num_adapters=args.num_adapters, dtype=args.dtype)


def sampling_settings(args: GenerateArguments):
    from ..evaluation import SamplingSettings

    if not args.do_sample:
        return SamplingSettings(args.max_new_tokens, num_beams=args.num_beams)
    return SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.num_beams)


def generate(args: GenerateArguments, model, tokenizer) -> list[dict]:
    """
    Generate every prompt at every λ, batching (prompt, λ) rows with a per-row λ; returns one record per row, its
    tokens counted as `evaluate()` counts them ([`~trl_realign.evaluation.count_generated_tokens`]).
    """
    from transformers import set_seed

    from ..evaluation import TransformersBackend

    set_seed(args.seed)
    prompts = read_prompts(args)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        if args.chat_template else p
        for p in prompts
    ]  # fmt: skip
    rows = [(prompt, text, lam) for prompt, text in zip(prompts, texts) for lam in args.realign_lambda]
    # The chat template already holds the special tokens it needs
    complete = TransformersBackend(model, tokenizer, args.batch_size, add_special_tokens=not args.chat_template)
    completions = complete([text for _, text, _ in rows], [lam for _, _, lam in rows], sampling_settings(args), 1)
    return [
        {"prompt": prompt, "realign_lambda": lam, "completion": c.text, "num_tokens": c.num_tokens,
         "finished": c.finished}
        for (prompt, _, lam), (c,) in zip(rows, completions)
    ]  # fmt: skip


def run(argv: list[str]) -> None:
    import torch
    from transformers import AutoTokenizer

    from .parsing import parse_and_check

    (args,) = parse_and_check(make_parser(), "generate", argv, check).args
    model = load_inra(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    records = generate(args, model, tokenizer)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.output_file is None:
        print(lines, end="")
    else:
        with open(args.output_file, "w") as f:
            f.write(lines)
        print(f"Wrote {len(records)} generations to {args.output_file}.")
