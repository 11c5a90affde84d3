"""
Dataset preparation for the paper's recipes (arXiv 2506.12704 §4.1-4.3): OpenR1-Math-220k filtered by generation length
(TrRa), its short chain-of-thought after `</think>` (InRa SFT), and UltraFeedback as DPO pairs (layer-adapter DPO).

Every function takes and returns a [`~datasets.Dataset`], so it works the same on the hub datasets and on small local
files in the same schemas. Outputs are in TRL's formats: prompt/completion for SFT-style trainers, conversational
prompt/chosen/rejected for [`~trl.DPOTrainer`].
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from datasets import Dataset


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
OPENR1_COLUMNS = ("problem", "generations", "correctness_math_verify")


def extract_short_cot(generation: str) -> str | None:
    """
    The short chain of thought of a reasoning trace: the text after its last `</think>`, stripped of surrounding
    whitespace. `None` when the trace has no `</think>` (it never finished thinking) or nothing follows it.
    """
    head, marker, tail = generation.rpartition(THINK_CLOSE)
    if not marker:
        return None
    return tail.strip() or None


def render_prompt(problem: str, tokenizer) -> str:
    """
    The text a chat model sees before its answer: the tokenizer's chat template applied to one user turn, with the
    generation prompt.

    The template's leading BOS token is removed when the tokenizer adds BOS itself, because TRL tokenizes
    non-conversational prompts with special tokens and would otherwise start every sequence with two BOS tokens.
    """
    if tokenizer.chat_template is None:
        raise ValueError(
            "The tokenizer has no chat template, so prompts cannot be rendered as the model sees them. Use the chat "
            "model's tokenizer (`--tokenizer_name_or_path`) or set `tokenizer.chat_template`."
        )
    messages = [{"role": "user", "content": problem}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos) :]
    return text


def _completion_after_prompt(prompt: str, generation: str) -> str:
    # Templates such as DeepSeek-R1's end the generation prompt with "<think>\n"; the trace then must not open it again
    if prompt.rstrip().endswith(THINK_OPEN) and generation.lstrip().startswith(THINK_OPEN):
        return generation.lstrip()[len(THINK_OPEN) :].lstrip("\n")
    return generation


def _correct_indices(row: dict, use_llama_judge: bool, require_complete: bool) -> list[int]:
    verified = row["correctness_math_verify"] or []
    judged = (row.get("correctness_llama") or []) if use_llama_judge else []
    complete = row.get("is_reasoning_complete") if require_complete else None
    indices = []
    for i in range(len(row["generations"])):
        correct = (i < len(verified) and bool(verified[i])) or (i < len(judged) and bool(judged[i]))
        if correct and (complete is None or (i < len(complete) and bool(complete[i]))):
            indices.append(i)
    return indices


def _check_columns(dataset: Dataset, required, what: str) -> None:
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset lacks the {what} columns {missing} (it has {dataset.column_names}). Expected the "
            f"schema of {what}."
        )


def _openr1_rows(
    dataset: Dataset,
    tokenizer,
    to_completion,
    min_tokens: int | None,
    max_tokens: int | None,
    keep: str,
    use_llama_judge: bool,
    require_complete: bool,
    num_proc: int | None,
) -> Dataset:
    _check_columns(dataset, OPENR1_COLUMNS, "open-r1/OpenR1-Math-220k")
    if keep not in ("first", "all"):
        raise ValueError(f"`keep` must be 'first' or 'all', got {keep!r}.")
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ValueError(f"`min_tokens` ({min_tokens}) is larger than `max_tokens` ({max_tokens}).")

    def explode(batch):
        out = {"prompt": [], "completion": [], "num_completion_tokens": []}
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for row in rows:
            prompt = render_prompt(row["problem"], tokenizer)
            candidates = []
            for i in _correct_indices(row, use_llama_judge, require_complete):
                completion = to_completion(prompt, row["generations"][i])
                if completion is not None:
                    candidates.append(completion)
            token_ids = tokenizer(candidates, add_special_tokens=False)["input_ids"] if candidates else []
            lengths = [len(ids) for ids in token_ids]
            for completion, length in zip(candidates, lengths):
                if (min_tokens is None or length >= min_tokens) and (max_tokens is None or length <= max_tokens):
                    out["prompt"].append(prompt)
                    out["completion"].append(completion)
                    out["num_completion_tokens"].append(length)
                    if keep == "first":
                        break
        return out

    return dataset.map(explode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc)


def prepare_openr1_math(
    dataset: Dataset,
    tokenizer,
    min_tokens: int | None = 4096,
    max_tokens: int | None = 8192,
    keep: str = "first",
    use_llama_judge: bool = False,
    require_complete: bool = True,
    num_proc: int | None = None,
) -> Dataset:
    """
    OpenR1-Math-220k (columns `problem`, `generations`, `correctness_math_verify`, optionally `correctness_llama` and
    `is_reasoning_complete`) to prompt/completion rows whose completion is a correct reasoning trace of
    `min_tokens`..`max_tokens` tokens (both inclusive, `None` for no bound), the paper's TrRa data (§4.1: 4k-8k).

    Args:
        dataset: the raw dataset.
        tokenizer: the reference model's tokenizer: renders the prompt with its chat template and counts tokens.
        min_tokens, max_tokens: bounds on the trace length in tokens, without special tokens.
        keep: `"first"` keeps one trace per problem (the first correct one within the bounds), `"all"` every one.
        use_llama_judge: also accept traces that only the Llama judge (`correctness_llama`) marked correct.
        require_complete: skip traces marked incomplete in `is_reasoning_complete` (when that column exists).
        num_proc: processes for `Dataset.map`.

    Returns:
        `Dataset` with `prompt` (chat-templated text), `completion` (the trace) and `num_completion_tokens`.
    """
    return _openr1_rows(
        dataset, tokenizer, _completion_after_prompt, min_tokens, max_tokens, keep, use_llama_judge,
        require_complete, num_proc,
    )


def prepare_openr1_short_cot(
    dataset: Dataset,
    tokenizer,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    keep: str = "first",
    use_llama_judge: bool = False,
    require_complete: bool = True,
    num_proc: int | None = None,
) -> Dataset:
    """
    OpenR1-Math-220k to prompt/completion rows whose completion is the short chain of thought of a correct trace (the
    text after `</think>`, see [`extract_short_cot`]): the InRa SFT data of the paper (§4.2). Arguments as
    [`prepare_openr1_math`]; the token bounds apply to the short completion.

    When the chat template opens a thinking block in the generation prompt (DeepSeek-R1's ends with `<think>\\n`), the
    completion closes it at once (`</think>\\n\\n` then the short answer), DeepSeek's own "no thinking" form, so that
    the adapter learns to skip the long reasoning from the very prompt the reasoning model is used with.
    """

    def short_completion(prompt: str, generation: str) -> str | None:
        short = extract_short_cot(generation)
        if short is None:
            return None
        return f"{THINK_CLOSE}\n\n{short}" if prompt.rstrip().endswith(THINK_OPEN) else short

    return _openr1_rows(
        dataset, tokenizer, short_completion, min_tokens, max_tokens, keep, use_llama_judge, require_complete,
        num_proc,
    )


def _binarized_pairs(dataset: Dataset, drop_ties: bool) -> Dataset:
    def split(row):
        chosen, rejected = row["chosen"], row["rejected"]
        if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
            raise ValueError("`chosen` and `rejected` must be conversations that end with an assistant turn.")
        if chosen[:-1] != rejected[:-1]:
            raise ValueError("`chosen` and `rejected` must share every turn but the last (the prompt).")
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}

    if drop_ties and "score_chosen" in dataset.column_names and "score_rejected" in dataset.column_names:
        dataset = dataset.filter(lambda row: row["score_chosen"] != row["score_rejected"])
    return dataset.map(split, remove_columns=dataset.column_names)


def _raw_pairs(dataset: Dataset, score_key: str, seed: int) -> Dataset:
    def score_of(completion: dict) -> float:
        value = completion[score_key]
        if isinstance(value, dict):  # `annotations`-style {aspect: {"Rating": "4", ...}}
            ratings = [float(v["Rating"]) for v in value.values() if str(v.get("Rating", "N/A")) != "N/A"]
            return sum(ratings) / len(ratings) if ratings else float("nan")
        return float(value)

    def binarize(batch, indices):
        out = {"prompt": [], "chosen": [], "rejected": []}
        for index, instruction, completions in zip(indices, batch["instruction"], batch["completions"]):
            scored = [(score_of(c), c["response"]) for c in completions if c.get("response")]
            scored = [(s, r) for s, r in scored if s == s]  # drop unrated (NaN) completions
            if len(scored) < 2:
                continue
            best_score, best = max(scored, key=lambda sr: sr[0])
            worse = [r for s, r in scored if s < best_score]
            if not worse:  # all ties: no preference to learn
                continue
            # The recipe of HuggingFaceH4/ultrafeedback_binarized: best vs a random lower-rated completion; seeded per
            # row so the pairs do not depend on batching or on the number of processes
            rejected = random.Random(seed * 1_000_003 + index).choice(worse)
            out["prompt"].append([{"role": "user", "content": instruction}])
            out["chosen"].append([{"role": "assistant", "content": best}])
            out["rejected"].append([{"role": "assistant", "content": rejected}])
        return out

    return dataset.map(binarize, batched=True, with_indices=True, remove_columns=dataset.column_names)


def prepare_ultrafeedback(
    dataset: Dataset, drop_ties: bool = True, score_key: str = "fine-grained_score", seed: int = 0
) -> Dataset:
    """
    UltraFeedback to conversational DPO pairs (`prompt`, `chosen`, `rejected`, each a list of messages), the paper's
    preference data (§4.3).

    Accepts either schema:
    - `HuggingFaceH4/ultrafeedback_binarized` (`chosen`/`rejected` conversations, `score_chosen`/`score_rejected`):
      the shared turns become the prompt; pairs with equal scores are dropped when `drop_ties`.
    - `openbmb/UltraFeedback` (`instruction`, `completions` with ratings): the highest-rated completion (by
      `score_key`, a number or an `annotations`-style dict of ratings) against a random lower-rated one (seeded by
      `seed` and the row index); rows whose completions are all tied are dropped.
    """
    if "chosen" in dataset.column_names and "rejected" in dataset.column_names:
        return _binarized_pairs(dataset, drop_ties)
    if "instruction" in dataset.column_names and "completions" in dataset.column_names:
        return _raw_pairs(dataset, score_key, seed)
    raise ValueError(
        f"Unrecognised UltraFeedback schema (columns {dataset.column_names}). Expected `chosen`/`rejected` "
        "(HuggingFaceH4/ultrafeedback_binarized) or `instruction`/`completions` (openbmb/UltraFeedback)."
    )


PREPARATIONS = ("openr1_math", "openr1_short_cot", "ultrafeedback")


@dataclass
class DatasetPreparationArguments:
    """
    Options of the dataset preparation step that the CLI runs on the loaded training split before training (or alone,
    with `trl-realign prepare`).
    """

    dataset_preparation: str | None = field(
        default=None,
        metadata={
            "help": "Preparation applied to the loaded dataset: 'openr1_math' (correct traces filtered by length, "
            "for TrRa), 'openr1_short_cot' (text after </think>, for InRa SFT), 'ultrafeedback' (DPO pairs). "
            "Unset or 'none': use the dataset as is.",
        },
    )
    min_completion_tokens: int | None = field(
        default=None, metadata={"help": "openr1_*: keep completions of at least this many tokens."}
    )
    max_completion_tokens: int | None = field(
        default=None, metadata={"help": "openr1_*: keep completions of at most this many tokens."}
    )
    keep_generations: str = field(
        default="first",
        metadata={"help": "openr1_*: 'first' correct trace per problem, or 'all'.", "choices": ["first", "all"]},
    )
    use_llama_judge: bool = field(
        default=False, metadata={"help": "openr1_*: also accept traces only the Llama judge marked correct."}
    )
    drop_ties: bool = field(default=True, metadata={"help": "ultrafeedback: drop pairs whose scores are equal."})
    preparation_num_proc: int | None = field(default=None, metadata={"help": "Processes for the preparation map."})

    def __post_init__(self):
        if isinstance(self.dataset_preparation, str) and self.dataset_preparation.lower() in ("none", "null", ""):
            self.dataset_preparation = None  # lets a flag switch off a recipe's preparation
        if self.dataset_preparation is not None and self.dataset_preparation not in PREPARATIONS:
            raise ValueError(
                f"Unknown `dataset_preparation={self.dataset_preparation!r}`; choose one of {list(PREPARATIONS)}."
            )


def prepare_dataset(dataset: Dataset, args: DatasetPreparationArguments, tokenizer=None, seed: int = 0) -> Dataset:
    """Apply `args.dataset_preparation` to `dataset` (unchanged when it is `None`)."""
    kind = args.dataset_preparation
    if kind is None:
        return dataset
    if kind == "ultrafeedback":
        return prepare_ultrafeedback(dataset, drop_ties=args.drop_ties, seed=seed)
    if tokenizer is None:
        raise ValueError(
            f"`dataset_preparation={kind!r}` needs the model's tokenizer to render prompts and count tokens."
        )
    prepare = prepare_openr1_math if kind == "openr1_math" else prepare_openr1_short_cot
    return prepare(
        dataset,
        tokenizer,
        min_tokens=args.min_completion_tokens,
        max_tokens=args.max_completion_tokens,
        keep=args.keep_generations,
        use_llama_judge=args.use_llama_judge,
        num_proc=args.preparation_num_proc,
    )
