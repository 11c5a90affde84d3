"""
The two frozen teachers of realignment (reference A, aligned B) and the streamed loss toward their fused logits.

Shared by every trainer that trains a student toward `softmax(λ·z_B + (1−λ)·z_A)`, whatever produces its batches
(`TrRaTrainer` on an `SFTTrainer`'s dataset, an on-policy trainer on a `DistillationTrainer`'s generations), so that
they agree on what A and B are, how they are checked and prepared, and what the loss is:

- [`resolve_teacher_sources`], before the trainer's `__init__` (the student is not yet wrapped): which models A and B
  are (objects, names, or A = the PEFT student's own starting policy).
- [`RealignTeachersMixin._setup_realign_teachers`], after it: load, freeze, check and prepare them.
- [`realign_loss`]: the loss of one micro-batch and its statistics, from the three models' last hidden states.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.models import prepare_deepspeed
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from .._compat import forward_redirection
from ..losses import TeacherHead, streamed_realign_divergence
from ..modeling.checks import (
    check_linear_output_head,
    check_text_batch,
    check_text_only,
    check_text_processing_class,
    check_tokenizer_of,
    check_vocab_rows,
)
from ..modeling.model_parts import decoder_of, is_peft_model, unwrap_peft


logger = logging.getLogger(__name__)

# What the backbone reads, including what TRL's padding-free collator emits for packed documents: flash-attention
# kernels take the boundaries from `cu_seq_lens_*` / `max_length_*`, hybrid (state-space) layers from `seq_idx`
_BACKBONE_KEYS = (
    "input_ids", "attention_mask", "position_ids",
    "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx",
)  # fmt: skip
# Stateless: reroutes a call through a wrapper's forward (DDP/DeepSpeed hooks see one forward per model)
redirect_forward = forward_redirection()

# The frozen copy of a PEFT student's starting adapter that serves as reference A (DPOTrainer keeps one as "ref")
REF_ADAPTER = "realign_ref"
# LoRA inits that leave the base weights alone; the others (PiSSA, OLoRA, CorDA, LoRA-GA, LoftQ) move part of them into
# the adapter, so that the network with adapters off is a residual model and not the model the user passed
_BASE_PRESERVING_LORA_INITS = ("gaussian", "eva", "mica", "orthogonal")
# Order of the statistics `realign_loss` returns (sums over this process's micro-batch)
STAT_NAMES = ("num_tokens", "divergence", "student_entropy", "teacher_entropy", "num_sequences")


@dataclass(frozen=True)
class RealignLossOptions:
    """What the loss needs besides the models and the batch; trainers build it from their config."""

    realign_lambda: float
    vocab_size: int
    divergence: str | None = None  # resolved as `losses.resolve_divergence` does: beta alone may select it
    beta: float | None = None
    temperature: float = 1.0
    token_chunk_size: int = 256
    vocab_chunk_size: int | None = None


class RealignTeachers(NamedTuple):
    """
    aligned: the aligned model B (as prepared: possibly a DeepSpeed engine or evaluation-mode wrapper).
    ref: the reference model A, or `None` when A is the PEFT student itself under `ref_adapter`.
    unwrap: the accelerator's `unwrap_model`.
    ref_adapter: the PEFT adapter that is A when `ref` is None (`None`: all adapters disabled, the base model).
    """

    aligned: Any
    ref: Any
    unwrap: Callable
    ref_adapter: str | None = None

    def heads(self, student, inputs, backbone_inputs, mask, realign_lambda: float) -> list[TeacherHead]:
        """The fused teacher's terms for this batch, B's then A's; a term whose coefficient is 0 is skipped."""
        heads = []
        # A head whose coefficient is 0 contributes nothing to the fused logits: skip its forward (λ = 0 or 1)
        if realign_lambda != 0.0:
            heads.append(self.head("aligned", student, backbone_inputs, mask, realign_lambda))
        if realign_lambda != 1.0:
            heads.append(self.head("ref", student, backbone_inputs, mask, 1.0 - realign_lambda))
        return heads

    def head(self, role: str, student, backbone_inputs, mask, coef: float) -> TeacherHead:
        """One teacher's forward on the scored positions (`role`: "aligned" is B, "ref" is A). Call without grad."""
        if role == "aligned":
            return _teacher_head(self.aligned, self.unwrap, backbone_inputs, mask, coef)
        if self.ref is not None:
            return _teacher_head(self.ref, self.unwrap, backbone_inputs, mask, coef)
        # PEFT student: A is the same network under its reference adapter (or none). The head is read inside: with
        # `lm_head` in `modules_to_save`, outside it is the trained copy
        with use_adapter(student, self.ref_adapter), _eval_mode(student):
            hidden = _hidden_states(student, backbone_inputs, mask)
            head = student.get_output_embeddings()
            return TeacherHead(hidden, head.weight, head.bias, coef)


def resolve_teacher_sources(model, ref_model, aligned_model, args, peft_config):
    """
    The reference and aligned models to load, before the trainer wraps the student.

    `aligned_model` defaults to `args.aligned_model_name_or_path` (required). `ref_model` defaults to
    `args.ref_model_name_or_path`, else to the student's starting weights: the student's own name, a frozen deep copy,
    or, for a PEFT student, `None`: A is then the student's own network as it starts, with no second copy of the base.
    A fresh adapter (`peft_config`) starts as the identity, so A is the network with adapters off, unless its init
    rewrites the base weights (PiSSA, OLoRA, ...): A is then copied as for a plain student. A PEFT student that
    already carries a trained adapter gets, as in `DPOTrainer`, a frozen copy of that adapter ([`REF_ADAPTER`]), so
    that A is the starting policy and not the bare base.

    Returns:
        `(ref_model, aligned_model)`: each a name, a model, or (`ref_model` only) `None`.
    """
    aligned_model = aligned_model if aligned_model is not None else args.aligned_model_name_or_path
    if aligned_model is None:
        raise ValueError(
            "Realignment needs an aligned model B: pass `aligned_model=` to the trainer or set "
            "`aligned_model_name_or_path` in its config."
        )
    ref_model = ref_model if ref_model is not None else args.ref_model_name_or_path
    peft_student = peft_config is not None or is_peft_model(model)
    rewrites_base = not is_peft_model(model) and _init_rewrites_base_weights(peft_config)

    # The copy must be taken before the trainer patches the student's forward and before PEFT wraps it
    if ref_model is None and (not peft_student or rewrites_base):
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
    elif ref_model is None and is_peft_model(model) and peft_config is None:
        _add_reference_adapter(model)
    elif ref_model is not None and peft_student:
        logger.info("A PEFT student was given together with `ref_model`: the given reference is used.")
    return ref_model, aligned_model


def _init_rewrites_base_weights(peft_config) -> bool:
    init = getattr(peft_config, "init_lora_weights", True)
    return isinstance(init, str) and init.lower() not in _BASE_PRESERVING_LORA_INITS


def _add_reference_adapter(model) -> None:
    # As DPOTrainer does: a second adapter with the active one's config and weights, never trained
    active = model.active_adapter
    if REF_ADAPTER in model.peft_config:
        raise ValueError(
            f"The PEFT student already has an adapter named {REF_ADAPTER!r}, the name of the frozen reference copy "
            "this trainer adds; rename or delete it."
        )
    model.add_adapter(REF_ADAPTER, model.peft_config[active])
    marker, ref_marker = f".{active}.", f".{REF_ADAPTER}."
    with torch.no_grad():
        for name, param in model.named_parameters():
            if marker in name:
                model.get_parameter(name.replace(marker, ref_marker)).copy_(param)
    model.set_adapter(active)
    for name, param in model.named_parameters():
        if ref_marker in name:
            param.requires_grad_(False)


def reference_adapter_of(student) -> str | None:
    """The adapter that is A for a PEFT student without `ref_model`: [`REF_ADAPTER`] if added, else `None` (all off)."""
    return REF_ADAPTER if REF_ADAPTER in getattr(student, "peft_config", {}) else None


def load_teacher(model: str | PreTrainedModel, role: str, args) -> PreTrainedModel:
    """A frozen, evaluation-mode teacher; a name is loaded with `args.teacher_model_init_kwargs` (or the student's)."""
    if isinstance(model, str):
        init_kwargs = dict(getattr(args, "teacher_model_init_kwargs", None) or args.model_init_kwargs or {})
        init_kwargs.setdefault("dtype", "auto")
        logger.info("Loading the %s from %s", role, model)
        model = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
    elif is_peft_model(model):
        raise ValueError(
            f"The {role} is a PEFT model; merge its adapter first (`model.merge_and_unload()`) and pass the result."
        )
    model.requires_grad_(False)
    return model.eval()


def check_realign_models(student, teachers: dict, tokenizer, vocab_size: int) -> None:
    """The student and every teacher (`{role: model or None}`) can be mixed at the logit level over the tokenizer."""
    probe = not is_deepspeed_zero3_enabled()
    student = unwrap_peft(student)
    check_text_only(student, "student")
    check_linear_output_head(student, "student", probe=probe)
    check_vocab_rows(student, vocab_size, "student")
    for role, teacher in teachers.items():
        if teacher is None:
            continue
        check_text_only(teacher, role)
        check_linear_output_head(teacher, role, probe=probe)
        check_vocab_rows(teacher, vocab_size, role)
        check_tokenizer_of(teacher, tokenizer, role)


class RealignTeachersMixin:
    """
    Teacher set-up and loss for a TRL trainer subclass (`SFTTrainer`, `DistillationTrainer`, ...): mix it in before
    the TRL trainer, call [`resolve_teacher_sources`] before `super().__init__` and `_setup_realign_teachers` after.
    Afterwards `self.aligned_model` and `self.ref_model` are the prepared teachers.
    """

    def _check_realign_student(self) -> None:
        """What the student and the processing class must be for any realignment loss, with live or cached teachers."""
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(
                "The student has no trainable parameters (was it frozen, e.g. by being passed as a teacher before?). "
                "Pass a model whose parameters require gradients, e.g. `copy.deepcopy(model).requires_grad_(True)`."
            )
        check_text_processing_class(self.processing_class)

    def _setup_realign_teachers(self, ref_model, aligned_model, vocab_size: int) -> None:
        self._check_realign_student()
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        aligned_model = load_teacher(aligned_model, "aligned model", self.args)
        ref_model = load_teacher(ref_model, "reference model", self.args) if ref_model is not None else None
        check_realign_models(
            self.model, {"aligned model": aligned_model, "reference model": ref_model}, tokenizer, vocab_size
        )
        if getattr(self.args, "disable_dropout", False):
            for model in (self.model, aligned_model, ref_model):
                if model is not None:
                    disable_dropout_in_model(model)
        self.aligned_model = self._prepare_teacher(aligned_model)
        self.ref_model = self._prepare_teacher(ref_model) if ref_model is not None else None

    def _prepare_teacher(self, model: PreTrainedModel):
        # As TRL prepares its own teachers: ZeRO-3 keeps them sharded, other setups get an evaluation-mode wrapper
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(model, self.accelerator)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    def _realign_teachers(self) -> RealignTeachers:
        ref_adapter = reference_adapter_of(self.accelerator.unwrap_model(self.model)) if self.ref_model is None else None
        return RealignTeachers(self.aligned_model, self.ref_model, self.accelerator.unwrap_model, ref_adapter)


# ---------------------------------------------------------------------------------------------------------- the loss


def scored_mask(inputs) -> torch.Tensor:
    """
    `[batch, length − 1]`: whether position t's prediction of token t+1 is scored. From `labels` (−100 is not
    scored: prompt, padding, non-assistant tokens), else from a `completion_mask` aligned with the end of `input_ids`.
    """
    if "labels" in inputs:
        return inputs["labels"][:, 1:] != -100
    if "completion_mask" in inputs:
        input_ids, completion_mask = inputs["input_ids"], inputs["completion_mask"]
        full = torch.zeros_like(input_ids, dtype=torch.bool)
        full[:, input_ids.shape[1] - completion_mask.shape[1]:] = completion_mask.bool()
        return full[:, 1:]
    raise ValueError(
        "The batch has neither `labels` nor `completion_mask`, so no token is marked for the loss: pass one of them "
        "(labels −100 on prompt and padding, or a 0/1 completion mask aligned with the end of `input_ids`)."
    )


@contextmanager
def _eval_mode(model):
    """Evaluation mode (no dropout) for a teacher forward, then every module's own mode back (the student's too)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _hidden_states(model, backbone_inputs, mask):
    hidden = decoder_of(model)(**backbone_inputs, use_cache=False).last_hidden_state
    return hidden[:, :-1][mask]


def _teacher_head(teacher, unwrap, backbone_inputs, mask, coef: float) -> TeacherHead:
    unwrapped = unwrap(teacher)
    with _eval_mode(unwrapped):
        # Through the teacher's own wrapper, so ZeRO-3 gathers its sharded layers for the forward
        if unwrapped is not teacher:
            hidden = redirect_forward(teacher, unwrapped, _hidden_states, unwrapped, backbone_inputs, mask)
        else:
            hidden = _hidden_states(unwrapped, backbone_inputs, mask)
    head = unwrapped.get_output_embeddings()
    return TeacherHead(hidden, head.weight, head.bias, coef)


def realign_loss(
    student, teachers: RealignTeachers, inputs, num_items_in_batch, options: RealignLossOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The realignment loss of one micro-batch: the divergence between the student and the fused teacher
    `softmax(λ·z_B + (1−λ)·z_A)`, summed over scored tokens and divided by `num_items_in_batch` (the scored tokens of
    the whole accumulated batch; this micro-batch's when `None`). Call it inside the student wrapper's forward
    (`_ForwardRedirection`), with `student` unwrapped.

    Args:
        student: the unwrapped student (a transformers model or a PEFT wrapper).
        teachers ([`RealignTeachers`] or a cached equivalent): B and A; their `heads(...)` gives the teacher terms.
        inputs: `input_ids` (and optionally `attention_mask`, `position_ids`, and the padding-free keys
            `cu_seq_lens_q/k`, `max_length_q/k`, `seq_idx`), with `labels` or `completion_mask` (see [`scored_mask`]).
        num_items_in_batch: the normaliser, or `None`.
        options ([`RealignLossOptions`]).

    Returns:
        `(loss, stats)`: the scalar loss, and a detached float tensor of this process's sums in the order of
        [`STAT_NAMES`], for the caller to gather (outside the wrapped forward) and log.
    """
    check_text_batch(inputs)
    backbone_inputs = {key: inputs[key] for key in _BACKBONE_KEYS if key in inputs}
    mask = scored_mask(inputs)

    student_hidden = _hidden_states(student, backbone_inputs, mask)
    with torch.no_grad():
        heads = teachers.heads(student, inputs, backbone_inputs, mask, options.realign_lambda)

    head = student.get_output_embeddings()
    out = streamed_realign_divergence(
        student_hidden,
        head.weight,
        head.bias,
        heads,
        vocab_size=options.vocab_size,
        divergence=options.divergence,
        beta=options.beta,
        temperature=options.temperature,
        token_chunk_size=options.token_chunk_size,
        vocab_chunk_size=options.vocab_chunk_size,
    )
    num_tokens = mask.sum()
    # The clamp makes a batch with no scored tokens a differentiable 0 instead of 0/0
    denominator = num_tokens if num_items_in_batch is None else num_items_in_batch
    loss = out.loss / torch.as_tensor(denominator, device=out.loss.device).clamp(min=1)

    stats = torch.stack(
        [
            num_tokens.float(),
            out.divergence.sum(),
            out.student_entropy.sum(),
            out.teacher_entropy.sum(),
            _num_sequences(inputs, mask),
        ]
    ).to(loss.device)
    return loss, stats


def _num_sequences(inputs, mask) -> torch.Tensor:
    """Rows of the batch; for a padding-free batch (several documents flattened in a row), the scored documents."""
    if "seq_idx" in inputs:
        # Position t is scored for token t+1, which belongs to document seq_idx[t+1]
        return torch.unique(inputs["seq_idx"][:, 1:][mask]).numel() + mask.new_zeros((), dtype=torch.float32)
    return torch.tensor(float(mask.shape[0]), device=mask.device)


def realign_metrics(stats: torch.Tensor) -> dict[str, float]:
    """Per-token means (and completion length per sequence) from `realign_loss` stats summed over processes."""
    values = dict(zip(STAT_NAMES, stats.tolist()))
    tokens = max(values["num_tokens"], 1.0)
    return {
        "divergence": values["divergence"] / tokens,
        "student_entropy": values["student_entropy"] / tokens,
        "teacher_entropy": values["teacher_entropy"] / tokens,
        "completion_length": values["num_tokens"] / max(values["num_sequences"], 1.0),
    }


def release_trainer(trainer) -> None:
    """
    Drop the references a finished trainer's accelerator and callbacks hold (models, teachers, optimizer,
    scheduler), so that the next trainer of the same process (TrRa-iter, a capture before training) does not double
    the peak.
    """
    trainer.accelerator.free_memory()
    handler = trainer.callback_handler
    handler.model = handler.optimizer = handler.lr_scheduler = handler.train_dataloader = None
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    trainer.aligned_model = trainer.ref_model = None
