"""Training-time realignment (TrRa, arXiv 2506.12704 §3.1) as an `SFTTrainer` with a streamed, fused-teacher loss."""

from __future__ import annotations

import copy
import logging

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl import SFTTrainer
from trl.models import prepare_deepspeed

from .._compat import forward_redirection as _ForwardRedirection
from .._compat import trainer_metrics
from ..losses import TeacherHead, streamed_realign_divergence
from ..modeling.checks import (
    check_linear_output_head,
    check_tokenizer_of,
    check_vocab_rows,
)
from ..modeling.model_parts import decoder_of, is_peft_model, unwrap_peft
from .trra_config import TrRaConfig


logger = logging.getLogger(__name__)

_BACKBONE_KEYS = ("input_ids", "attention_mask", "position_ids")


class TrRaTrainer(SFTTrainer):
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
        ref_model (`str` or `PreTrainedModel`, *optional*):
            The reference model A. Defaults to `args.ref_model_name_or_path`, else to a frozen copy of the student's
            starting weights; with a PEFT student, to the student with its adapter disabled (no second copy).
        aligned_model (`str` or `PreTrainedModel`, *optional*):
            The aligned model B. Defaults to `args.aligned_model_name_or_path`; one of the two is required.
        args ([`TrRaConfig`], *optional*):
            Configuration; every [`~trl.SFTConfig`] field applies.
        train_dataset, eval_dataset, processing_class, peft_config, **kwargs:
            As in [`~trl.SFTTrainer`] (prompt/completion and conversational datasets).
    """

    _tag_names = ["trl", "trl-realign", "trra"]

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: str | PreTrainedModel | None = None,
        aligned_model: str | PreTrainedModel | None = None,
        args: TrRaConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path or "model"
            args = TrRaConfig(f"{name.split('/')[-1]}-TrRa")
        elif not isinstance(args, TrRaConfig):
            raise TypeError(f"`args` must be a `TrRaConfig`, got {type(args).__name__}.")

        aligned_model = aligned_model if aligned_model is not None else args.aligned_model_name_or_path
        if aligned_model is None:
            raise ValueError(
                "TrRa needs an aligned model B: pass `aligned_model=` to the trainer or set "
                "`TrRaConfig.aligned_model_name_or_path`."
            )
        ref_model = ref_model if ref_model is not None else args.ref_model_name_or_path
        peft_student = peft_config is not None or is_peft_model(model)

        # The copy must be taken before `SFTTrainer` patches the student's forward and before PEFT wraps it
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
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )

        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(
                "The student has no trainable parameters (was it frozen, e.g. by being passed as a teacher before?). "
                "Pass a model whose parameters require gradients, e.g. `copy.deepcopy(model).requires_grad_(True)`."
            )
        self.realign_lambda = args.realign_lambda
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.vocab_size = len(tokenizer)

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
            check_tokenizer_of(teacher, tokenizer, role)

        self.aligned_model = self._prepare_teacher(aligned_model)
        self.ref_model = self._prepare_teacher(ref_model) if ref_model is not None else None
        self._forward_redirection = _ForwardRedirection()

    # ------------------------------------------------------------------ teachers

    def _load_teacher(self, model: str | PreTrainedModel, role: str) -> PreTrainedModel:
        if isinstance(model, str):
            init_kwargs = dict(self.args.teacher_model_init_kwargs or self.args.model_init_kwargs or {})
            init_kwargs.setdefault("dtype", "auto")
            logger.info("Loading the %s from %s", role, model)
            model = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
        elif is_peft_model(model):
            raise ValueError(
                f"The {role} is a PEFT model; merge its adapter first (`model.merge_and_unload()`) and pass the result."
            )
        model.requires_grad_(False)
        return model.eval()

    def _prepare_teacher(self, model: PreTrainedModel):
        # As TRL prepares its own teachers: ZeRO-3 keeps them sharded, other setups get an evaluation-mode wrapper
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(model, self.accelerator)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # Route the whole loss through the student's wrapper (DDP/DeepSpeed), so that its hooks see one forward
        unwrapped = self.accelerator.unwrap_model(model)
        loss, stats = self._forward_redirection(model, unwrapped, self._compute_loss, unwrapped, inputs, num_items_in_batch)

        # Collectives run after the wrapped forward returns, as in SFTTrainer. One row per process: a plain gather, since
        # `gather_for_metrics` trims the last eval batch by samples and would drop whole processes' rows
        stats = self.accelerator.gather(stats.unsqueeze(0)).sum(0)
        num_tokens, divergence, student_entropy, teacher_entropy, num_sequences = stats.tolist()
        denominator = max(num_tokens, 1.0)
        trainer_metrics(self, mode)["divergence"].append(divergence / denominator)
        trainer_metrics(self, mode)["student_entropy"].append(student_entropy / denominator)
        trainer_metrics(self, mode)["teacher_entropy"].append(teacher_entropy / denominator)
        trainer_metrics(self, mode)["completion_length"].append(num_tokens / max(num_sequences, 1.0))
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

    def _hidden_states(self, model, backbone_inputs, mask):
        hidden = decoder_of(model)(**backbone_inputs, use_cache=False).last_hidden_state
        return hidden[:, :-1][mask]

    def _compute_loss(self, student, inputs, num_items_in_batch):
        backbone_inputs = {key: inputs[key] for key in _BACKBONE_KEYS if key in inputs}
        # Position t predicts token t+1; masked labels (-100) are prompt, padding or non-assistant tokens
        mask = inputs["labels"][:, 1:] != -100

        student_hidden = self._hidden_states(student, backbone_inputs, mask)
        teachers = []
        lam = self.realign_lambda
        with torch.no_grad():
            # A head whose coefficient is 0 contributes nothing to the fused logits: skip its forward (λ = 0 or 1)
            if lam != 0.0:
                teachers.append(self._teacher_head(self.aligned_model, backbone_inputs, mask, lam))
            if lam != 1.0:
                if self.ref_model is not None:
                    teachers.append(self._teacher_head(self.ref_model, backbone_inputs, mask, 1.0 - lam))
                else:
                    # PEFT student: the reference is the same network with its adapter switched off
                    with student.disable_adapter():
                        hidden = self._hidden_states(student, backbone_inputs, mask)
                    head = student.get_output_embeddings()
                    teachers.append(TeacherHead(hidden, head.weight, head.bias, 1.0 - lam))

        head = student.get_output_embeddings()
        out = streamed_realign_divergence(
            student_hidden,
            head.weight,
            head.bias,
            teachers,
            vocab_size=self.vocab_size,
            divergence=self.args.divergence,
            beta=self.args.beta,
            temperature=self.args.temperature,
            token_chunk_size=self.args.loss_token_chunk_size,
            vocab_chunk_size=self.args.loss_vocab_chunk_size,
        )
        num_tokens = mask.sum()
        # Same normalisation as SFTTrainer: by the tokens of the whole accumulated (and, across devices, global)
        # batch, so that accumulation and data parallelism reproduce one large batch. The clamp makes a batch with
        # no completion tokens a differentiable 0 instead of 0/0.
        denominator = num_tokens if num_items_in_batch is None else num_items_in_batch
        loss = out.loss / torch.as_tensor(denominator, device=out.loss.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        stats = torch.stack(
            [
                num_tokens.float(),
                out.divergence.sum(),
                out.student_entropy.sum(),
                out.teacher_entropy.sum(),
                torch.tensor(float(mask.shape[0]), device=mask.device),
            ]
        ).to(loss.device)
        return loss, stats

    def _teacher_head(self, teacher, backbone_inputs, mask, coef: float) -> TeacherHead:
        unwrapped = self.accelerator.unwrap_model(teacher)
        # Through the teacher's own wrapper, so ZeRO-3 gathers its sharded layers for the forward
        if unwrapped is not teacher:
            hidden = self._forward_redirection(teacher, unwrapped, self._hidden_states, unwrapped, backbone_inputs, mask)
        else:
            hidden = self._hidden_states(unwrapped, backbone_inputs, mask)
        head = unwrapped.get_output_embeddings()
        return TeacherHead(hidden, head.weight, head.bias, coef)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
