"""Training-time realignment (TrRa, arXiv 2506.12704 §3.1) as an `SFTTrainer` with a streamed, fused-teacher loss."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel
from trl import SFTTrainer
from trl.trainer.utils import disable_dropout_in_model

from .._compat import trainer_metrics
from ..data.teacher_cache import TeacherCache, TeacherCacheError
from .cached_teachers import (
    ROW_COLUMN,
    CachedRealignTeachers,
    CacheRowCollator,
    TeacherCacheConfigCallback,
    attach_cache_rows,
    check_cache_matches_run,
    check_cached_teacher_name,
    check_student_is_cached_reference,
    map_eval_datasets,
)
from .layer_adapter.reference import AdapterBypassedModel
from .paper import REALIGN_PAPER
from .realign_teachers import (
    RealignLossOptions,
    RealignTeachersMixin,
    check_realign_models,
    realign_loss,
    realign_metrics,
    redirect_forward,
    resolve_teacher_sources,
)
from .trra_config import TrRaConfig


logger = logging.getLogger(__name__)


def open_cache_for_run(directory, model, ref_model, aligned_model, args):
    """The cache, once the teachers this run names (if any) are the ones it holds."""
    cache = TeacherCache(directory)
    check_cached_teacher_name(cache, "aligned", aligned_model or args.aligned_model_name_or_path, "aligned_model")
    if _student_is_reference(ref_model, args):
        # A defaults to the student's starting weights: the student must start from the captured A
        student_name = model if isinstance(model, str) else None
        if student_name is not None and student_name != cache.teachers["ref"]["name_or_path"]:
            raise TeacherCacheError(
                f"The student starts from {student_name!r}, but the reference A in the teacher cache in {directory} "
                f"is {cache.teachers['ref']['name_or_path']!r}: start from A, or name A with `ref_model_name_or_path` "
                "if the student should start elsewhere."
            )
    else:
        check_cached_teacher_name(cache, "ref", ref_model or args.ref_model_name_or_path, "ref_model")
    return cache


def _student_is_reference(ref_model, args) -> bool:
    # The layer adapter's reference is the student itself, with its adapter bypassed
    if isinstance(ref_model, AdapterBypassedModel):
        return True
    return ref_model is None and args.ref_model_name_or_path is None


class TrRaTrainer(RealignTeachersMixin, SFTTrainer):
    r"""
    Trainer for training-time realignment (TrRa).

    The student (`model`) is trained toward the per-token teacher `softmax(λ·z_B + (1−λ)·z_A)`, where `z_A` and `z_B`
    are the logits of two frozen models: the reference A (`ref_model`) and the aligned model B (`aligned_model`). The
    loss is `args.divergence` between student and teacher over the vocabulary, on completion (or assistant) tokens only,
    normalised like [`~trl.SFTTrainer`]'s so that gradient accumulation and several processes match one large batch.

    Neither the student's nor the teachers' `[tokens × vocab]` logits are materialised: the loss is streamed from the
    three models' last hidden states and output heads, and the two teacher heads are fused into one virtual head.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            The student, usually the reference model A itself. A hub id or path is loaded with
            `args.model_init_kwargs`.
        aligned_model (`str` or `PreTrainedModel`, *optional*):
            The aligned model B (the teacher of TRL's distillation trainers, in the same place). Defaults to
            `args.aligned_model_name_or_path`; one of the two is required.
        args ([`TrRaConfig`], *optional*):
            Configuration; every [`~trl.SFTConfig`] field applies.
        train_dataset, eval_dataset, processing_class, peft_config, **kwargs:
            As in [`~trl.SFTTrainer`] (prompt/completion and conversational datasets).
        ref_model (`str` or `PreTrainedModel`, *optional*, keyword only):
            The reference model A. Defaults to `args.ref_model_name_or_path`, else to a frozen copy of the student's
            starting weights. A PEFT student is its own reference, with no second copy of the base: with a new
            adapter (`peft_config`), the network with adapters off (a frozen copy for inits that rewrite the base
            weights: PiSSA, OLoRA, ...); with an adapter it already carries, a frozen copy of that adapter (its
            starting policy, as in `DPOTrainer`).
    """

    _tag_names = ["trl", "trl-realign", "trra"]
    _name = "TrRa"
    _paper = REALIGN_PAPER

    def __init__(
        self,
        model: str | PreTrainedModel,
        aligned_model: str | PreTrainedModel | None = None,
        args: TrRaConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        *,
        ref_model: str | PreTrainedModel | None = None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path or "model"
            args = TrRaConfig(f"{name.split('/')[-1]}-TrRa")
        elif not isinstance(args, TrRaConfig):
            raise TypeError(
                f"`args` (the third positional argument) must be a `TrRaConfig`, got {type(args).__name__}. The order "
                "is `TrRaTrainer(model, aligned_model, args, train_dataset, ...)`, as in TRL's distillation trainers; "
                "pass the reference model A by keyword, `ref_model=`."
            )

        cache = None
        if args.teacher_cache:
            cache = open_cache_for_run(args.teacher_cache, model, ref_model, aligned_model, args)
        else:
            ref_model, aligned_model = resolve_teacher_sources(model, ref_model, aligned_model, args, peft_config)

        super().__init__(
            model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )

        self.realign_lambda = args.realign_lambda
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.vocab_size = len(tokenizer)
        self._cached_teachers = None
        if cache is None:
            self._setup_realign_teachers(ref_model, aligned_model, self.vocab_size)
        else:
            self._setup_cached_teachers(cache, student_is_reference=_student_is_reference(ref_model, args))

    # ------------------------------------------------------------------ teacher cache

    def _setup_cached_teachers(self, cache, student_is_reference: bool) -> None:
        check_cache_matches_run(cache, self.args, self.processing_class)
        self._check_realign_student()
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        check_realign_models(self.model, {}, tokenizer, self.vocab_size)
        self.train_dataset = attach_cache_rows(self.train_dataset, cache, "train")
        if self.eval_dataset is not None:
            self.eval_dataset = map_eval_datasets(
                self.eval_dataset, lambda dataset, name: attach_cache_rows(dataset, cache, name)
            )
        self.data_collator = CacheRowCollator(self.data_collator)
        if getattr(self.args, "disable_dropout", False):
            disable_dropout_in_model(self.model)
        self._cached_teachers = CachedRealignTeachers(cache, self.accelerator.device)
        if student_is_reference:
            check_student_is_cached_reference(self.accelerator.unwrap_model(self.model), cache, self.vocab_size)
        self.aligned_model = self.ref_model = None
        self.add_callback(TeacherCacheConfigCallback(cache))
        logger.info("TrRa from the teacher cache in %s: no teacher is loaded.", cache.directory)

    def _realign_teachers(self):
        if self._cached_teachers is not None:
            return self._cached_teachers
        return super()._realign_teachers()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self._cached_teachers is not None and eval_dataset is not None and not isinstance(eval_dataset, str):
            # Prepared as SFTTrainer.evaluate would (it skips what is already tokenized), then matched to the cache
            packing = self.args.packing if self.args.eval_packing is None else self.args.eval_packing
            cache = self._cached_teachers.cache

            def prepared(dataset, name):
                dataset = self._prepare_dataset(
                    dataset, self.processing_class, self.args, packing, self._formatting_func, name
                )
                return attach_cache_rows(dataset, cache, name)

            eval_dataset = map_eval_datasets(eval_dataset, prepared)
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._cached_teachers is not None and ROW_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, ROW_COLUMN]

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # Route the whole loss through the student's wrapper (DDP/DeepSpeed), so that its hooks see one forward
        unwrapped = self.accelerator.unwrap_model(model)
        loss, stats = redirect_forward(model, unwrapped, self._compute_loss, unwrapped, inputs, num_items_in_batch)

        # Collectives run after the wrapped forward returns, as in SFTTrainer. One row per process: a plain gather, since
        # `gather_for_metrics` trims the last eval batch by samples and would drop whole processes' rows
        stats = self.accelerator.gather(stats.unsqueeze(0)).sum(0)
        for name, value in realign_metrics(stats).items():
            trainer_metrics(self, mode)[name].append(value)
        if mode == "train":
            self._total_train_tokens += int(
                self.accelerator.gather_for_metrics(self._count_input_tokens(inputs)).sum().item()
            )
            trainer_metrics(self, mode)["num_tokens"] = [self._total_train_tokens]
        if return_outputs:
            raise ValueError(
                "TrRaTrainer never materialises logits, so it cannot return them; use `prediction_loss_only=True`."
            )
        return loss

    @staticmethod
    def _count_input_tokens(inputs) -> torch.Tensor:
        if "attention_mask" in inputs:
            return inputs["attention_mask"].sum().reshape(1)
        return torch.tensor([inputs["input_ids"].numel()], device=inputs["input_ids"].device)

    def _realign_loss_options(self) -> RealignLossOptions:
        return RealignLossOptions(
            realign_lambda=self.realign_lambda,
            vocab_size=self.vocab_size,
            divergence=self.args.divergence,
            beta=self.args.beta,
            temperature=self.args.temperature,
            token_chunk_size=self.args.loss_token_chunk_size,
            vocab_chunk_size=self.args.loss_vocab_chunk_size,
        )

    def _compute_loss(self, student, inputs, num_items_in_batch):
        # Same normalisation as SFTTrainer: by the tokens of the whole accumulated (and, across devices, global)
        # batch, so that accumulation and data parallelism reproduce one large batch
        loss, stats = realign_loss(
            student, self._realign_teachers(), inputs, num_items_in_batch, self._realign_loss_options()
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return loss, stats

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
