"""Capture a teacher cache: run A and B once over a TrRa run's data, exactly as its trainer prepares it."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time

import torch
from tqdm.auto import tqdm
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from .. import __version__
from ..data.teacher_cache import (
    DEFAULT_SHARD_BYTES,
    ROLES,
    TeacherCache,
    TeacherCacheError,
    TeacherCacheWriter,
    iter_prepared_rows,
    plan_shard_starts,
    read_manifest,
    scored_token_count,
    teacher_directory,
)
from .cached_teachers import run_identity, teacher_identity
from .realign_teachers import _BACKBONE_KEYS, release_trainer, scored_mask
from .trra_config import check_unpacked_for_teacher_cache
from .trra_trainer import TrRaTrainer


logger = logging.getLogger(__name__)


def build_teacher_cache(
    model,
    aligned_model=None,
    args=None,
    train_dataset=None,
    eval_dataset=None,
    processing_class=None,
    peft_config=None,
    *,
    ref_model=None,
    teacher_cache: str | None = None,
    trainer_class: type = TrRaTrainer,
    reuse_reference_from: str | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    **trainer_kwargs,
) -> str:
    """
    Run the reference A and the aligned model B over the training (and evaluation) data of a TrRa run and store,
    for every scored token, their final hidden states, plus their output heads: a cache from which
    `TrRaConfig(teacher_cache=...)` trains without loading either teacher, exactly, for every λ, β and temperature.

    The arguments are those of the trainer that will train from the cache (`trainer_class`, default
    [`TrRaTrainer`]; [`LayerAdapterTrRaTrainer`] for the layer adapter, whose A is the bypassed model): the data go
    through that trainer's own preparation (tokenization, chat template, truncation, completion mask), so the cached
    rows are the rows it trains on. Under `accelerate launch` every process captures its share of the shards. Rerun
    the same call after an interruption: the shards already written are kept.

    Args:
        model, aligned_model, args, train_dataset, eval_dataset, processing_class, peft_config, ref_model:
            As for the trainer; `args.teacher_cache` (or `teacher_cache`) is where the cache goes.
        reuse_reference_from (`str`, *optional*):
            A complete cache of the same data whose A is reused (only B is captured): TrRa-iter's later iterations.
        shard_bytes (`int`): target size of one teacher's shard.

    Returns:
        `str`: the cache folder.
    """
    directory = teacher_cache or getattr(args, "teacher_cache", None)
    if not directory:
        raise ValueError("Where should the teacher cache go? Set `teacher_cache` (a folder) in the config or call.")
    check_unpacked_for_teacher_cache(args)
    if is_deepspeed_zero3_enabled():
        raise TeacherCacheError(
            "Capturing a teacher cache under DeepSpeed ZeRO-3 is not supported (processes would run unequal numbers "
            "of sharded forwards): capture without DeepSpeed or with ZeRO-2; training from the cache works under ZeRO-3."
        )
    manifest = read_manifest(directory)
    if manifest is not None and manifest.get("complete"):
        # Checked against the data and teachers when a run trains from it; capturing again needs an empty folder
        logger.warning(
            "The teacher cache in %s is complete (%s rows, teachers %s); nothing to capture. Delete the folder to "
            "capture again.", directory, manifest.get("rows"),
            {role: t.get("name_or_path") for role, t in manifest.get("teachers", {}).items()},
        )
        return directory

    capture_args = dataclasses.replace(args, teacher_cache=None, report_to=[])
    if ref_model is not None:
        trainer_kwargs["ref_model"] = ref_model
    trainer = trainer_class(
        model, aligned_model, capture_args, train_dataset, eval_dataset, processing_class, peft_config, **trainer_kwargs
    )
    try:
        _capture(trainer, model, aligned_model, ref_model, args, train_dataset, eval_dataset, directory,
                 reuse_reference_from, shard_bytes)
    finally:
        _release(trainer)
    return directory


def _prepared_datasets(trainer) -> dict:
    datasets = {"train": trainer.train_dataset}
    if isinstance(trainer.eval_dataset, dict):
        datasets.update({f"eval_{name}": ds for name, ds in trainer.eval_dataset.items()})
    elif trainer.eval_dataset is not None:
        datasets["eval"] = trainer.eval_dataset
    return datasets


def _plan_rows(datasets: dict):
    """Unique prepared rows (train first, then evaluation), with their keys, scored-token counts and sources."""
    keys, num_tokens, sources, seen = [], [], [], set()
    for name, dataset in datasets.items():
        for index, (key, labels) in enumerate(iter_prepared_rows(dataset)):
            if key not in seen:
                seen.add(key)
                keys.append(key)
                num_tokens.append(scored_token_count(labels))
                sources.append((name, index))
    return keys, num_tokens, sources


def _name_of(source) -> str | None:
    if source is None:
        return None
    if isinstance(source, str):
        return source
    return getattr(getattr(source, "config", None), "_name_or_path", None) or None


def _forward_batch(trainer, student, teachers, examples, roles) -> dict:
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    mask = scored_mask(batch)
    backbone_inputs = {key: batch[key] for key in _BACKBONE_KEYS if key in batch}
    with torch.no_grad(), trainer.compute_loss_context_manager():
        return {role: teachers.head(role, student, backbone_inputs, mask, 1.0).hidden for role in roles}


def _capture(trainer, model, aligned_model, ref_model, args, train_dataset, eval_dataset, directory, reuse, shard_bytes):
    accelerator = trainer.accelerator
    student = accelerator.unwrap_model(trainer.model)
    teachers = trainer._realign_teachers()
    datasets = _prepared_datasets(trainer)
    keys, num_tokens, sources = _plan_rows(datasets)
    if not keys:
        raise TeacherCacheError("The training data have no rows after preparation; nothing to capture.")

    def example(row):
        name, index = sources[row]
        item = datasets[name][index]
        return {"input_ids": item["input_ids"], "labels": item["labels"]}

    base = TeacherCache(reuse) if reuse else None
    roles = ("aligned",) if base else ROLES
    # One probe row gives each teacher's hidden size and the dtype its forward produces (what the cache stores)
    probe = _forward_batch(trainer, student, teachers, [example(0)], roles)
    init_kwargs = getattr(args, "teacher_model_init_kwargs", None) or args.model_init_kwargs or {}
    revision = init_kwargs.get("revision") if isinstance(init_kwargs, dict) else None
    names = {"aligned": _name_of(aligned_model or args.aligned_model_name_or_path),
             "ref": _name_of(ref_model or args.ref_model_name_or_path or model)}
    identities = {
        role: {**teacher_identity(_teacher_model(teachers, role, student), names[role], revision,
                                  probe[role].shape[-1], probe[role].dtype), "directory": role}
        for role in roles
    }
    if base:
        if base.num_tokens != num_tokens or [base.row_of_key(k) for k in keys] != list(range(len(keys))):
            raise TeacherCacheError(
                f"The cache to reuse A from ({reuse}) was captured from other rows than this run's; capture both "
                "teachers instead (leave out `reuse_reference_from`)."
            )
        identities["ref"] = {
            **base.teachers["ref"],
            "directory": os.path.relpath(teacher_directory(base.directory, base.teachers["ref"]), directory),
        }
        shard_starts = base.shard_starts
    else:
        bytes_per_token = max(probe[r].shape[-1] * probe[r].element_size() for r in roles)
        shard_starts = plan_shard_starts(num_tokens, bytes_per_token, shard_bytes)
    manifest = {
        "package_version": __version__,
        "run": run_identity(args, trainer.processing_class),
        "vocab_size": trainer.vocab_size,
        "datasets": {
            "train": {"fingerprint": getattr(train_dataset, "_fingerprint", None), "rows": len(train_dataset)},
            **({"eval": {"rows": sum(len(d) for n, d in datasets.items() if n != "train")}} if eval_dataset else {}),
        },
        "rows": len(keys),
        "tokens": int(sum(num_tokens)),
        "teachers": identities,
    }
    writer = TeacherCacheWriter(directory, manifest, keys, num_tokens, shard_starts)
    if accelerator.is_main_process:
        resumed = writer.start()
        for role in roles:
            weight, bias = _teacher_head_params(teachers, role, student)
            writer.write_head(role, weight, bias)
        if resumed:
            logger.info("Resuming the capture in %s", directory)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        writer.start()  # checks that the plan on disk is this process's plan

    mine = [s for s in range(writer.num_shards) if s % accelerator.num_processes == accelerator.process_index]
    todo = [s for s in mine if not all(writer.shard_done(role, s) for role in roles)]
    total = sum(writer.shard_tokens(s) for s in todo)
    batch_size = args.per_device_eval_batch_size
    start = time.perf_counter()
    quiet = not accelerator.is_local_main_process or args.disable_tqdm
    with tqdm(total=total, unit="tok", desc="Capturing teachers", disable=quiet) as bar:
        for shard in todo:
            parts = {role: [] for role in roles}
            rows = list(range(shard_starts[shard], shard_starts[shard + 1]))
            for i in range(0, len(rows), batch_size):
                hidden = _forward_batch(trainer, student, teachers, [example(r) for r in rows[i:i + batch_size]], roles)
                for role in roles:
                    parts[role].append(hidden[role].cpu())
                bar.update(sum(num_tokens[r] for r in rows[i:i + batch_size]))
                bar.set_postfix(tokens_per_s=f"{bar.n / max(time.perf_counter() - start, 1e-9):,.0f}")
            for role in roles:
                writer.write_shard(role, shard, torch.cat(parts[role]))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        writer.finish()
        logger.info(describe_teacher_cache(directory))
    accelerator.wait_for_everyone()


def describe_teacher_cache(directory: str) -> str:
    """One line: where the cache is, its rows and tokens, its size on disk and bytes per token."""
    manifest = read_manifest(directory)
    tokens, disk = manifest["tokens"], manifest["disk_bytes"]
    hidden = sum(
        t["hidden_size"] * torch.empty(0, dtype=_dtype(t["dtype"])).element_size() for t in manifest["teachers"].values()
    )
    return (
        f"Teacher cache in {directory}: {manifest['rows']:,} rows, {tokens:,} scored tokens, {disk / 2**20:,.1f} MiB "
        f"on disk, {disk / max(tokens, 1):,.0f} bytes per token (hidden states {hidden:,}; the rest is the heads and "
        "the index)."
    )


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _teacher_model(teachers, role, student):
    model = teachers.aligned if role == "aligned" else teachers.ref
    return teachers.unwrap(model) if model is not None else student


def _teacher_head_params(teachers, role, student):
    from trl.trainer.utils import use_adapter

    if role == "ref" and teachers.ref is None:
        with use_adapter(student, teachers.ref_adapter):
            head = student.get_output_embeddings()
            return head.weight.detach().clone(), None if head.bias is None else head.bias.detach().clone()
    head = _teacher_model(teachers, role, student).get_output_embeddings()
    return head.weight.detach(), None if head.bias is None else head.bias.detach()


def _release(trainer) -> None:
    release_trainer(trainer)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
