"""On-policy TrRa: TRL's `DistillationTrainer` (the student samples) with the fused two-model teacher of TrRa."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl import DistillationTrainer
from trl.data_utils import is_conversational
from trl.models import prepare_deepspeed

from ..losses import TeacherHead, streamed_realign_divergence
from ..modeling.checks import check_linear_output_head, check_tokenizer_of, check_vocab_rows
from ..modeling.model_parts import is_peft_model, unwrap_peft
from .onpolicy_trra_config import OnPolicyTrRaConfig
from .paper import REALIGN_PAPER


logger = logging.getLogger(__name__)


class OnPolicyTrRaTrainer(DistillationTrainer):
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
        ref_model (`str` or `PreTrainedModel`, *optional*):
            The reference model A. Defaults to `args.ref_model_name_or_path`, else to a frozen copy of the student's
            starting weights; with a PEFT student, to the student with its adapter disabled (no second copy).
        aligned_model (`str` or `PreTrainedModel`, *optional*):
            The aligned model B. Defaults to `args.aligned_model_name_or_path`; one of the two is required.
        args ([`OnPolicyTrRaConfig`], *optional*):
            Configuration; every [`~trl.DistillationConfig`] field applies.
        train_dataset, eval_dataset, processing_class, callbacks, optimizers, peft_config, tools:
            As in [`~trl.DistillationTrainer`]: the datasets need a `"prompt"` column (and `"completion"` when
            `args.lmbda < 1`).
    """

    _tag_names = ["trl", "trl-realign", "trra", "on-policy"]
    _name = "On-policy TrRa"
    _paper = REALIGN_PAPER

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: str | PreTrainedModel | None = None,
        aligned_model: str | PreTrainedModel | None = None,
        args: OnPolicyTrRaConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        tools=None,
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

        aligned_model = aligned_model if aligned_model is not None else args.aligned_model_name_or_path
        if aligned_model is None:
            raise ValueError(
                "On-policy TrRa needs an aligned model B: pass `aligned_model=` to the trainer or set "
                "`OnPolicyTrRaConfig.aligned_model_name_or_path`."
            )
        ref_model = ref_model if ref_model is not None else args.ref_model_name_or_path
        peft_student = peft_config is not None or is_peft_model(model)
        # The copy must be taken before PEFT wraps the student
        if ref_model is None and not peft_student:
            if isinstance(model, str):
                ref_model = model
            elif is_deepspeed_zero3_enabled():
                if not model.config._name_or_path:
                    raise ValueError(
                        "Under DeepSpeed ZeRO-3 the reference model cannot be copied from an in-memory student "
                        "(its weights are already sharded). Pass the student as a path, or pass `ref_model=`."
                    )
                ref_model = model.config._name_or_path
            else:
                ref_model = copy.deepcopy(model)
        elif ref_model is not None and peft_student:
            logger.info("A PEFT student was given together with `ref_model`: the given reference is used.")

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

        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(
                "The student has no trainable parameters (was it frozen, e.g. by being passed as a teacher before?). "
                "Pass a model whose parameters require gradients, e.g. `copy.deepcopy(model).requires_grad_(True)`."
            )
        self.realign_lambda = args.realign_lambda
        self.lmbda = args.lmbda
        # Only the rows the tokenizer can produce are scored, so heads padded to different sizes (Qwen) mix
        self.vocab_size = len(self._tokenizer)

        aligned_model = self._load_teacher(aligned_model, "aligned model")
        ref_model = self._load_teacher(ref_model, "reference model") if ref_model is not None else None
        probe = not is_deepspeed_zero3_enabled()
        student = unwrap_peft(self.model)
        check_linear_output_head(student, "student", probe=probe)
        check_vocab_rows(student, self.vocab_size, "student")
        for role, teacher in (("aligned model", aligned_model), ("reference model", ref_model)):
            if teacher is None:
                continue
            check_linear_output_head(teacher, role, probe=probe)
            check_vocab_rows(teacher, self.vocab_size, role)
            check_tokenizer_of(teacher, self._tokenizer, role)
        self.aligned_model = self._prepare_teacher(aligned_model)
        self.ref_model = self._prepare_teacher(ref_model) if ref_model is not None else None
        self._dataset_completions = None

    # ------------------------------------------------------------------ teachers

    def _load_teacher(self, model: str | PreTrainedModel, role: str) -> PreTrainedModel:
        if isinstance(model, str):
            init_kwargs = dict(self.args.teacher_model_init_kwargs or self.args.model_init_kwargs or {})
            init_kwargs.setdefault("dtype", "auto")
            if self.args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
                init_kwargs["device_map"] = None  # as TRL: distributed training cannot use device_map="auto"
            logger.info("Loading the %s from %s", role, model)
            model = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
        elif is_peft_model(model):
            raise ValueError(
                f"The {role} is a PEFT model; merge its adapter first (`model.merge_and_unload()`) and pass the result."
            )
        model.requires_grad_(False)
        return model.eval()

    def _prepare_teacher(self, model: PreTrainedModel):
        # As TRL prepares its teacher: ZeRO-3 keeps it sharded, other setups get an evaluation-mode wrapper
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(model, self.accelerator)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

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
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        return [
            self._tokenize_completion(prompt, completion, ids)[: self.max_completion_length]
            for (prompt, completion), ids in zip(self._dataset_completions, prompt_ids, strict=True)
        ]

    def _tokenize_completion(self, prompt, completion, prompt_ids) -> list[int]:
        """The dataset's completion as the token ids that follow `prompt_ids`, ending with EOS like a sample."""
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
        if not ids or ids[-1] not in self.eos_token_ids:
            ids.append(self._tokenizer.eos_token_id)
        return ids

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        output = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Collectives after the wrapped forward has returned (see TRL's compute_loss)
        stats = self.accelerator.gather(self._loss_stats.unsqueeze(0)).sum(0)
        num_tokens, divergence, teacher_entropy = stats.tolist()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["divergence"].append(divergence / max(num_tokens, 1.0))
        self._metrics[mode]["teacher_entropy"].append(teacher_entropy / max(num_tokens, 1.0))
        return output

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        # Same inputs, masks and normalisation as TRL's chunked loss; only the teacher differs
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        loss_mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            loss_mask = loss_mask * inputs["tool_mask"]
        mask = loss_mask.bool()
        backbone_args = (input_ids, attention_mask, inputs["completion_ids"].size(1))

        student_hidden = self._get_last_hidden_state(unwrapped_student, *backbone_args)[mask]
        lam = self.realign_lambda
        teachers = []
        with torch.no_grad():
            # A head whose coefficient is 0 contributes nothing to the fused logits: skip its forward (λ = 0 or 1)
            if lam != 0.0:
                teachers.append(self._teacher_head(self.aligned_model, backbone_args, mask, lam))
            if lam != 1.0:
                if self.ref_model is not None:
                    teachers.append(self._teacher_head(self.ref_model, backbone_args, mask, 1.0 - lam))
                else:
                    # PEFT student: the reference is the same network with its adapter switched off
                    with unwrapped_student.disable_adapter():
                        hidden = self._get_last_hidden_state(unwrapped_student, *backbone_args)[mask]
                    head = unwrapped_student.get_output_embeddings()
                    teachers.append(TeacherHead(hidden, head.weight, head.bias, 1.0 - lam))

        head = unwrapped_student.get_output_embeddings()
        out = streamed_realign_divergence(
            student_hidden,
            head.weight,
            head.bias,
            teachers,
            vocab_size=self.vocab_size,
            divergence="jsd",  # with TRL's `beta`: 1 is reverse KL, 0 forward KL
            beta=self.beta,
            temperature=self.temperature,
            token_chunk_size=self.args.loss_token_chunk_size,
            vocab_chunk_size=self.args.loss_vocab_chunk_size,
        )
        num_tokens = mask.sum()
        denominator = num_tokens.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = out.loss / torch.as_tensor(denominator, device=out.loss.device)
        self._loss_stats = torch.stack(
            [num_tokens.float(), out.divergence.sum(), out.teacher_entropy.sum()]
        ).to(loss.device)
        return loss, out.student_entropy.sum(), num_tokens

    def _teacher_head(self, teacher, backbone_args, mask, coef: float) -> TeacherHead:
        unwrapped = self.accelerator.unwrap_model(teacher)
        # Through the teacher's own wrapper, so ZeRO-3 gathers its sharded layers for the forward
        hidden = self._forward_redirection(teacher, unwrapped, self._get_last_hidden_state, unwrapped, *backbone_args)
        hidden = hidden[mask]
        head = unwrapped.get_output_embeddings()
        return TeacherHead(hidden, head.weight, head.bias, coef)
