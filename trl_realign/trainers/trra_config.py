import math
from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from ..losses import DIVERGENCES, resolve_divergence


@dataclass
class TrRaConfig(SFTConfig):
    r"""
    Configuration class for [`TrRaTrainer`]: training-time realignment (arXiv 2506.12704, §3.1).

    The student starts from a reference model A and is trained, token by token on completion tokens, toward the teacher
    `softmax(λ·z_B + (1−λ)·z_A)` built from the logits of two frozen models: A and an aligned model B. Every
    [`~trl.SFTConfig`] field keeps its meaning (datasets, completion-only masking, batch sizes, optimisation, logging).

    Parameters:
        realign_lambda (`float`, *optional*, defaults to `1.5`):
            λ, the alignment strength of the teacher. `0` is the reference A, `1` the aligned model B, `λ>1`
            extrapolates beyond B and `λ<0` moves away from B. Any finite value. `1.5` is the paper's released recipe.
        divergence (`str`, *optional*):
            Token-level divergence between student and teacher: `"reverse_kl"` is KL(student ‖ teacher), the paper's
            Eq. 6 and the default; `"forward_kl"` is KL(teacher ‖ student); `"jsd"` is the generalised Jensen–Shannon
            divergence with weight `beta` (0.5 unless set).
        beta (`float`, *optional*):
            As in TRL's `DistillationConfig`, `beta` alone selects the divergence: `0` forward KL, `1` reverse KL, in
            between the generalised JSD with that weight. Set either knob, or `divergence="jsd"` with a `beta`; a pair
            that disagrees (e.g. `divergence="reverse_kl", beta=0.5`) is an error. After `__post_init__` both hold
            the resolved values.
        temperature (`float`, *optional*, defaults to `1.0`):
            Both the student's and the teacher's logits are divided by it before the softmax.
        loss_token_chunk_size (`int`, *optional*, defaults to `256`):
            Tokens per chunk of the streamed loss. Teacher and student logits exist only one chunk at a time, so the
            memory of the loss scales with `loss_token_chunk_size × loss_vocab_chunk_size` rather than tokens × vocab:
            about 600 MB at 256 tokens and vocab 151,936, 2.4 GB at 1,024 (on CPU the larger chunk was at most ~10 %
            faster, within the machine's noise; benchmarks/README.md).
        loss_vocab_chunk_size (`int`, *optional*):
            Vocabulary entries per tile. `None` (default) takes the whole vocabulary at once, so that every projection
            is computed once; a smaller tile saves memory at the cost of recomputing the projections (three passes).
        aligned_model_name_or_path (`str`, *optional*):
            The aligned model B, when it is not passed to the trainer as `aligned_model`.
        ref_model_name_or_path (`str`, *optional*):
            The reference model A, when it is not passed as `ref_model`. By default A is a frozen copy of the student's
            starting weights (or, for a PEFT student, the student with its adapter disabled).
        teacher_model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for `AutoModelForCausalLM.from_pretrained` when a teacher is given by name or path.
            Defaults to `model_init_kwargs`.
        teacher_cache (`str`, *optional*):
            A teacher cache folder (written by `build_teacher_cache` / `trl-realign cache-teachers` for this data and
            these teachers): the teachers' hidden states and heads are read from it, and neither teacher is loaded.
            Exact for any λ, divergence and temperature. Refused when the data, tokenizer, preprocessing or a teacher
            named here differ from the capture's; needs `packing=False` and `padding_free=False`.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Zero every dropout layer of the student and the teachers, as TRL's DPO and distillation trainers can.
            Whatever its value, teacher forwards (a PEFT student's reference forward included) run in eval mode.
    """

    realign_lambda: float = field(
        default=1.5,
        metadata={"help": "λ: teacher = softmax(λ·z_aligned + (1−λ)·z_ref). λ>1 extrapolates, λ<0 moves away."},
    )
    divergence: str | None = field(
        default=None,
        metadata={
            "help": "Token-level divergence (default reverse_kl, or what beta selects).",
            "choices": list(DIVERGENCES),
        },
    )
    beta: float | None = field(
        default=None,
        metadata={"help": "As in TRL's distillation: 0 forward KL, 1 reverse KL, in between the JSD weight."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of student and teacher."})
    loss_token_chunk_size: int = field(default=256, metadata={"help": "Tokens per chunk of the streamed loss."})
    loss_vocab_chunk_size: int | None = field(
        default=None, metadata={"help": "Vocabulary entries per tile of the streamed loss (default: all at once)."}
    )
    aligned_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The aligned model B (hub id or path)."}
    )
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The reference model A (defaults to the student's starting weights)."}
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs for the teachers (defaults to model_init_kwargs)."}
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Train from a teacher cache folder (trl-realign cache-teachers): no teacher is loaded."},
    )

    disable_dropout: bool = field(
        default=True, metadata={"help": "Zero the dropout of the student and the teachers."}
    )

    def __post_init__(self):
        super().__post_init__()
        # The CLI passes numbers as strings; the checks below must see floats.
        self.realign_lambda = float(self.realign_lambda)
        if not math.isfinite(self.realign_lambda):
            raise ValueError(
                f"`realign_lambda` must be a finite number, got {self.realign_lambda}. "
                "Pass a float such as 0.5, 2.0 or -0.5."
            )
        self.divergence, self.beta = resolve_divergence(self.divergence, self.beta)
        check_streamed_loss_options(self)
        if self.teacher_cache:
            check_unpacked_for_teacher_cache(self)


def check_streamed_loss_options(config) -> None:
    """The options of the streamed fused-teacher loss that TrRa and on-policy TrRa configs share."""
    if not (math.isfinite(config.temperature) and config.temperature > 0):
        raise ValueError(f"`temperature` must be a positive finite number, got {config.temperature}.")
    if config.loss_token_chunk_size < 1 or (
        config.loss_vocab_chunk_size is not None and config.loss_vocab_chunk_size < 1
    ):
        raise ValueError(
            "`loss_token_chunk_size` and `loss_vocab_chunk_size` must be positive integers "
            "(leave `loss_vocab_chunk_size` unset to take the whole vocabulary at once)."
        )


def check_unpacked_for_teacher_cache(config) -> None:
    """A teacher cache serves unpacked rows, to capture and to train from (the config's check and the capture's)."""
    if config.packing or config.padding_free:
        raise ValueError(
            "`teacher_cache` serves unpacked rows: set `packing=False` and `padding_free=False` (packed rows mix "
            "documents differently from run to run, so their cached rows cannot be matched)."
        )
