"""
Training from a teacher cache: the two teachers' hidden states come from disk instead of two live forwards.

What a cache must agree on with the run that reads it, and how a trainer's batches find their rows:

- [`run_identity`] and [`teacher_identity`]: what the manifest records and a run compares (tokenizer, preprocessing,
  teachers). [`check_cache_matches_run`] refuses a cache captured for anything else, naming the difference.
- [`attach_cache_rows`]: each prepared row gets the index of its cached row (matched by content, so any order,
  subset or split works), and [`CacheRowCollator`] carries that index into the batch.
- [`CachedRealignTeachers`]: the stand-in for the live teachers in `realign_loss` (same fused heads, same order).
"""

from __future__ import annotations

import hashlib
import json

import torch
from transformers import TrainerCallback

from ..data.teacher_cache import TeacherCache, TeacherCacheError, iter_prepared_rows
from ..losses import TeacherHead


ROW_COLUMN = "teacher_cache_row"
# Preprocessing options that change which token ids the teachers see or which positions are scored
_PREPROCESSING_FIELDS = (
    "max_length", "truncation_mode", "packing", "padding_free", "completion_only_loss", "assistant_only_loss",
    "dataset_text_field", "chat_template_path", "eos_token", "pad_token",
)  # fmt: skip
_FIX = "capture a cache for this run (`trl-realign cache-teachers` with the same recipe and flags) or drop `teacher_cache`"


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_identity(args, processing_class) -> dict:
    """What, besides the data, decides the prepared token ids and scored positions: tokenizer and preprocessing."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return {
        "tokenizer": _sha256(
            {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map, "len": len(tokenizer)}
        ),
        "chat_template": _sha256(getattr(tokenizer, "chat_template", None)),
        **{name: getattr(args, name, None) for name in _PREPROCESSING_FIELDS},
    }


def teacher_identity(model, name_or_path: str | None, revision: str | None, hidden_size: int, dtype) -> dict:
    config = getattr(model, "config", None)
    return {
        "name_or_path": name_or_path,
        "revision": revision,
        "dtype": str(dtype).removeprefix("torch."),
        "hidden_size": int(hidden_size),
        "config_sha256": _sha256(config.to_dict()) if config is not None else None,
    }


def check_cache_matches_run(cache: TeacherCache, args, processing_class) -> None:
    """Refuse, naming the first difference, a cache whose tokenizer or preprocessing is not this run's."""
    captured, run = cache.manifest["run"], run_identity(args, processing_class)
    for name in ("tokenizer", "chat_template", *_PREPROCESSING_FIELDS):
        if captured.get(name) != run.get(name):
            if name in ("tokenizer", "chat_template"):
                what = f"another {name} than this run's"
            else:
                what = f"{name}={captured.get(name)!r}, the run has {name}={run.get(name)!r}"
            raise TeacherCacheError(f"The teacher cache in {cache.directory} was captured with {what}; {_FIX}.")


def check_cached_teacher_name(cache: TeacherCache, role: str, given, option: str) -> None:
    """A teacher given by name must be the one captured; an in-memory teacher cannot be checked and is refused."""
    if given is None:
        return
    captured = cache.teachers[role]["name_or_path"]
    if not isinstance(given, str):
        raise TeacherCacheError(
            f"With `teacher_cache`, the {role} teacher comes from the cache ({captured}); pass no model object as "
            f"`{option}` (a name is checked against the cache, an in-memory model cannot be)."
        )
    if given != captured:
        raise TeacherCacheError(
            f"The run names {given!r} as `{option}`, but the teacher cache in {cache.directory} holds {captured!r}; "
            f"{_FIX}."
        )


def check_student_is_cached_reference(student, cache: TeacherCache, vocab_size: int) -> None:
    """
    When A defaults to the student's starting weights, the student's head must be A's cached head (a cheap check
    that the student starts from the captured model; the names were compared before loading).
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return  # the student's head is sharded; the names were compared
    weight, _ = cache.heads("ref")
    head = student.get_output_embeddings().weight
    rows = min(vocab_size, weight.shape[0], head.shape[0])
    if head.shape[1:] != weight.shape[1:] or not torch.equal(head[:rows].detach().cpu().to(weight.dtype), weight[:rows]):
        raise TeacherCacheError(
            f"The student does not start from the reference A captured in {cache.directory} (their output heads "
            "differ): start from A, or name A with `ref_model_name_or_path` if the student should start elsewhere."
        )


def attach_cache_rows(dataset, cache: TeacherCache, name: str):
    """`dataset` (prepared: `input_ids`, `labels`) with the cached row of every row in [`ROW_COLUMN`]."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise TeacherCacheError(
            f"The {name} dataset is a {type(dataset).__name__}; a teacher cache needs a map-style `datasets.Dataset` "
            "(its rows are matched to cached rows before training)."
        )
    rows, missing = [], 0
    for key, _ in iter_prepared_rows(dataset):
        row = cache.row_of_key(key)
        missing += row is None
        rows.append(-1 if row is None else row)
    if missing:
        raise TeacherCacheError(
            f"{missing} of the {len(rows)} rows of the {name} dataset are not in the teacher cache in "
            f"{cache.directory} (captured from {cache.manifest['datasets']}): the data differ from the capture's; "
            f"{_FIX}."
        )
    if ROW_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(ROW_COLUMN)
    return dataset.add_column(ROW_COLUMN, rows)


def map_eval_datasets(eval_dataset, fn):
    """`fn(dataset, name)` on an evaluation dataset, or on each of a dict of them (named by their keys)."""
    if isinstance(eval_dataset, dict):
        return {name: fn(dataset, name) for name, dataset in eval_dataset.items()}
    return fn(eval_dataset, "eval")


class CacheRowCollator:
    """Wraps the trainer's collator: the rows' cache indices travel beside the batch as `teacher_cache_row`."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        if ROW_COLUMN not in examples[0]:
            raise TeacherCacheError(
                f"The batch lost its `{ROW_COLUMN}` column on the way to the collator, so it cannot be matched to "
                "the teacher cache (was `remove_unused_columns` changed by a subclass?)."
            )
        rows = [example[ROW_COLUMN] for example in examples]
        batch = self.collator([{k: v for k, v in example.items() if k != ROW_COLUMN} for example in examples])
        batch[ROW_COLUMN] = torch.tensor(rows, dtype=torch.int64)
        return batch


class CachedRealignTeachers:
    """
    The teachers as `realign_loss` uses them, read from a cache: the same [`TeacherHead`]s as the live teachers give
    (B's term first, then A's), with the cached hidden states and heads. Only the two heads are held in memory.
    """

    def __init__(self, cache: TeacherCache, device):
        self.cache = cache
        self.device = torch.device(device)
        self._heads = {role: cache.heads(role, self.device) for role in cache.teachers}

    def heads(self, student, inputs, backbone_inputs, mask, realign_lambda: float) -> list[TeacherHead]:
        if ROW_COLUMN not in inputs:
            raise TeacherCacheError(f"The batch has no `{ROW_COLUMN}`, so its rows cannot be found in the cache.")
        rows = inputs[ROW_COLUMN].tolist()
        scored = mask.sum(dim=1).tolist()
        cached = [self.cache.num_tokens[row] for row in rows]
        if scored != cached:
            raise TeacherCacheError(
                f"The batch scores {scored} tokens per row, the teacher cache holds {cached}: the preprocessing of "
                f"this run differs from the capture's; {_FIX}."
            )
        heads = []
        for role, coef in (("aligned", realign_lambda), ("ref", 1.0 - realign_lambda)):
            if coef == 0.0:
                continue
            hidden = self.cache.hidden(role, rows).to(self.device, non_blocking=True)
            weight, bias = self._heads[role]
            heads.append(TeacherHead(hidden, weight, bias, coef))
        return heads


def cache_manifest_summary(cache: TeacherCache) -> dict:
    """The manifest fields worth logging with a run (e.g. into its wandb config)."""
    manifest = cache.manifest
    return {
        "teacher_cache": cache.directory,
        "teacher_cache_format_version": manifest["format_version"],
        "teacher_cache_package_version": manifest.get("package_version"),
        "teacher_cache_teachers": {role: t["name_or_path"] for role, t in manifest["teachers"].items()},
        "teacher_cache_rows": len(cache.num_tokens),
        "teacher_cache_tokens": cache.offsets[-1],
    }



class TeacherCacheConfigCallback(TrainerCallback):
    """Adds the cache's manifest summary to the wandb run's config, so that a sweep's runs say what they trained from."""

    def __init__(self, cache: TeacherCache):
        self.summary = cache_manifest_summary(cache)

    def on_train_begin(self, args, state, control, **kwargs):
        # After transformers' WandbCallback, which starts (or joins) the run in its own `on_train_begin`
        if state.is_world_process_zero and "wandb" in (args.report_to or []):
            import wandb

            if wandb.run is not None:
                wandb.config.update(self.summary, allow_val_change=True)
