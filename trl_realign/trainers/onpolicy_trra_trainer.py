"""On-policy TrRa: TRL's `DistillationTrainer` (the student samples) with the fused two-model teacher of TrRa."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel
from trl import DistillationTrainer
from trl.data_utils import is_conversational
from trl.extras.profiling import profiling_context

from ..modeling.checks import check_text_processing_class
from .onpolicy_trra_config import OnPolicyTrRaConfig
from .onpolicy_vllm import (
    check_vllm_mode,
    colocated_engine_from_student,
    needs_reload_sync,
    reload_colocated_weights,
)
from .paper import REALIGN_PAPER
from .realign_teachers import (
    STAT_NAMES,
    RealignLossOptions,
    RealignTeachersMixin,
    realign_loss,
    realign_metrics,
    resolve_teacher_sources,
)


class OnPolicyTrRaTrainer(RealignTeachersMixin, DistillationTrainer):
    r"""
    Trainer for on-policy training-time realignment.

    For each batch of prompts the student (`model`) samples completions, exactly as [`~trl.DistillationTrainer`] does
    (transformers or vLLM, `generation_kwargs`, tools, completion logging, ZeRO-3), and is trained on those tokens toward
    the per-token teacher `softmax(λ·z_B + (1−λ)·z_A)` of two frozen models: the reference A (`ref_model`) and the
    aligned model B (`aligned_model`). Off-policy TrRa ([`TrRaTrainer`]) only trains on the dataset's completions, so a
    student never sees the states that follow B's choices when B branches away early (e.g. answers at once); sampling
    from the student trains exactly those states.

    The loss is TRL's: the divergence selected by `args.beta` on the sampled completion tokens (after the first EOS
    nothing is trained), summed and divided by the number of completion tokens of the global batch. It is streamed from
    the three models' last hidden states: no `[tokens × vocab]` logits exist for any of them, and the two teacher heads
    are fused into one virtual head `λ·(W_B h_B + b_B) + (1−λ)·(W_A h_A + b_A)`.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            The student, usually the reference model A itself. A hub id or path is loaded with
            `args.model_init_kwargs`.
        aligned_model (`str` or `PreTrainedModel`, *optional*):
            The aligned model B (in the place of TRL's `teacher_model`). Defaults to `args.aligned_model_name_or_path`;
            one of the two is required.
        args ([`OnPolicyTrRaConfig`], *optional*):
            Configuration; every [`~trl.DistillationConfig`] field applies.
        train_dataset, eval_dataset, processing_class, callbacks, optimizers, peft_config, tools:
            As in [`~trl.DistillationTrainer`]: the datasets need a `"prompt"` column (and `"completion"` when
            `args.lmbda < 1`).
        ref_model (`str` or `PreTrainedModel`, *optional*, keyword only, as in [`TrRaTrainer`]):
            The reference model A. Defaults to `args.ref_model_name_or_path`, else to the student's starting policy:
            a frozen copy, or for a PEFT student the student itself without a second copy of the base.
    """

    _tag_names = ["trl", "trl-realign", "trra", "on-policy"]
    _name = "On-policy TrRa"
    _paper = REALIGN_PAPER

    def __init__(
        self,
        model: str | PreTrainedModel,
        aligned_model: str | PreTrainedModel | None = None,
        args: OnPolicyTrRaConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        tools=None,
        *,
        ref_model: str | PreTrainedModel | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path or "model"
            args = OnPolicyTrRaConfig(f"{name.split('/')[-1]}-OnPolicyTrRa")
        elif not isinstance(args, OnPolicyTrRaConfig):
            raise TypeError(f"`args` must be an `OnPolicyTrRaConfig`, got {type(args).__name__}.")
        if args.lmbda < 1.0:
            if tools:
                raise ValueError(
                    "`lmbda < 1` trains some batches on the dataset's completions, which have no tool calls to "
                    "execute: use `lmbda=1` with tools."
                )
            columns = getattr(train_dataset, "column_names", None)
            if columns is not None and "completion" not in columns:
                raise ValueError(
                    f"`lmbda={args.lmbda}` trains {1 - args.lmbda:.0%} of the batches on the dataset's `completion` "
                    f"column, which the training dataset lacks (it has {columns}). Add the column or set `lmbda=1`."
                )

        check_vllm_mode(args)
        # Before DistillationTrainer's set-up for vision-language models, which fails on a text model's config
        check_text_processing_class(processing_class)
        # Before the student is wrapped: A defaults to a copy of its starting weights
        ref_model, aligned_model = resolve_teacher_sources(model, ref_model, aligned_model, args, peft_config)
        # vLLM serves the student as it is in memory (an expanded layer-adapter model included), not its checkpoint
        with colocated_engine_from_student(self, args):
            super().__init__(
                model,
                teacher_model=None,  # two teachers, loaded and prepared below
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
                tools=tools,
            )

        self.lmbda = args.lmbda
        # Only the rows the tokenizer can produce are scored, so heads padded to different sizes (Qwen) mix
        vocab_size = len(self._tokenizer)
        self._setup_realign_teachers(ref_model, aligned_model, vocab_size)
        self._realign_loss_options = RealignLossOptions(
            realign_lambda=args.realign_lambda,
            vocab_size=vocab_size,
            divergence="jsd",  # with TRL's `beta`: 1 is reverse KL, 0 forward KL, the generalised JSD in between
            beta=args.beta,
            temperature=args.temperature,
            token_chunk_size=args.loss_token_chunk_size,
            vocab_chunk_size=args.loss_vocab_chunk_size,
        )
        self._dataset_completions = None
        self._reload_sync = needs_reload_sync(self)

    # ------------------------------------------------------------------ GKD's mixing: dataset completions

    def _generate_and_score_completions(self, inputs):
        self._dataset_completions = None
        on_policy = True
        if self.model.training and self.lmbda < 1.0:
            # Seeded by the step alone: every process draws the same (generation runs collectives under ZeRO-3), and a
            # resumed run draws what the uninterrupted one did
            on_policy = np.random.default_rng([self.args.seed, self.state.global_step]).random() < self.lmbda
            if not on_policy:
                if "completion" not in inputs[0]:
                    raise ValueError(
                        f"`lmbda={self.lmbda}` needs a `completion` column in the dataset for its off-policy batches."
                    )
                self._dataset_completions = [(x["prompt"], x["completion"]) for x in inputs]
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._dataset_completions = None
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["on_policy"].append(float(on_policy))
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        if self._dataset_completions is None:
            if self._reload_sync and self.use_vllm and self.state.global_step != self._last_loaded_step:
                # TRL's sync cannot update vLLM's CPU backend (onpolicy_vllm.py); marking the step loaded skips it
                with profiling_context(self, "sync_weights"):
                    reload_colocated_weights(self.vllm_generation)
                self._last_loaded_step = self.state.global_step
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        return [
            self._tokenize_completion(prompt, completion, ids)[: self.max_completion_length]
            for (prompt, completion), ids in zip(self._dataset_completions, prompt_ids, strict=True)
        ]

    def _tokenize_completion(self, prompt, completion, prompt_ids) -> list[int]:
        """The dataset's completion as the token ids after `prompt_ids`, ending at its first EOS like a sample."""
        if is_conversational({"prompt": prompt}):
            full = self.processing_class.apply_chat_template(
                prompt + completion, tokenize=True, return_dict=True, **self.chat_template_kwargs
            )["input_ids"]
            if list(full[: len(prompt_ids)]) != list(prompt_ids):
                raise ValueError(
                    "The chat template does not render the prompt as a prefix of prompt + completion, so the "
                    "dataset's completion tokens cannot be placed after the prompt; use `lmbda=1`."
                )
            ids = list(full[len(prompt_ids) :])
        else:
            ids = self.processing_class(text=completion, add_special_tokens=False)["input_ids"]
        # Templates that write past the end-of-turn token (ChatML's `<|im_end|>\n`, Gemma's) would otherwise train
        # that text and a second EOS, which a sample never contains
        first_eos = next((i for i, token in enumerate(ids) if token in self.eos_token_ids), None)
        if first_eos is None:
            return [*ids, self._tokenizer.eos_token_id]
        return ids[: first_eos + 1]

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        output = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Collectives after the wrapped forward has returned, as in TRL's compute_loss
        metrics = realign_metrics(self.accelerator.gather(self._loss_stats.unsqueeze(0)).sum(0))
        mode = "train" if self.model.training else "eval"
        for name in ("divergence", "teacher_entropy"):  # TRL logs the student's entropy and completion lengths
            self._metrics[mode][name].append(metrics[name])
        return output

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        # TRL's layout: left-padded prompts, then completions right-padded after their first EOS
        loss_mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            loss_mask = loss_mask * inputs["tool_mask"]  # tool outputs are not the student's tokens
        batch = {
            "input_ids": torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
            "attention_mask": torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            "completion_mask": loss_mask,
        }
        loss, stats = realign_loss(
            unwrapped_student, self._realign_teachers(), batch, num_items_in_batch, self._realign_loss_options
        )
        self._loss_stats = stats
        # What TRL's compute_loss logs: the student's entropy and the number of scored tokens
        return loss, stats[STAT_NAMES.index("student_entropy")], stats[STAT_NAMES.index("num_tokens")]
