"""Training-time realignment (TrRa, arXiv 2506.12704 §3.1) as an `SFTTrainer` with a streamed, fused-teacher loss."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from trl import SFTTrainer

from .._compat import trainer_metrics
from .paper import REALIGN_PAPER
from .realign_teachers import (
    RealignLossOptions,
    RealignTeachersMixin,
    realign_loss,
    realign_metrics,
    redirect_forward,
    resolve_teacher_sources,
)
from .trra_config import TrRaConfig


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
        self._setup_realign_teachers(ref_model, aligned_model, self.vocab_size)

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
