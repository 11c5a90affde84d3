from dataclasses import dataclass, field

from trl import DistillationConfig

from ..modeling.realign_lambda import check_realign_lambda
from .trra_config import check_streamed_loss_options


@dataclass
class OnPolicyTrRaConfig(DistillationConfig):
    r"""
    Configuration class for [`OnPolicyTrRaTrainer`]: on-policy training-time realignment.

    The student samples completions for the dataset's prompts (with transformers or vLLM, as in
    [`~trl.DistillationTrainer`]) and is trained on them toward the per-token teacher `softmax(λ·z_B + (1−λ)·z_A)` of
    two frozen models, the reference A and the aligned model B. Every [`~trl.DistillationConfig`] field keeps its
    meaning: `beta` selects the divergence (`1` reverse KL, the paper's Eq. 6 and the default; `0` forward KL; in
    between the generalised JSD), `temperature` is both the sampling and the loss temperature, `max_completion_length`,
    `top_p`, `top_k`, `min_p`, `generation_kwargs`, `use_vllm`, `log_completions`, ... are TRL's.

    Parameters:
        realign_lambda (`float`, *optional*, defaults to `1.5`):
            λ, the alignment strength of the teacher: `0` is A, `1` is B, `λ>1` extrapolates beyond B and `λ<0` moves
            away from B. Any finite value.
        lmbda (`float`, *optional*, defaults to `1.0`):
            GKD's mixing knob (arXiv 2306.13649): the probability that a generation batch is sampled by the student.
            With probability `1 − lmbda` the batch is trained on the dataset's own `"completion"` column instead
            (off-policy TrRa on those tokens). `1.0` is purely on-policy, as [`~trl.DistillationTrainer`].
        aligned_model_name_or_path (`str`, *optional*):
            The aligned model B, when it is not passed to the trainer as `aligned_model`.
        ref_model_name_or_path (`str`, *optional*):
            The reference model A, when it is not passed as `ref_model`. By default A is a frozen copy of the student's
            starting weights (or, for a PEFT student, the student with its adapter disabled).
        loss_token_chunk_size (`int`, *optional*, defaults to `256`):
            Tokens per chunk of the streamed loss: no `[tokens × vocab]` logits exist for any of the three models.
        loss_vocab_chunk_size (`int`, *optional*):
            Vocabulary entries per tile of the streamed loss; `None` (default) takes the whole vocabulary at once.

    `teacher_model_init_kwargs` applies to both teachers when they are given by name or path;
    `teacher_model_name_or_path` is refused (name A and B with the two fields above).
    """

    realign_lambda: float = field(
        default=1.5,
        metadata={"help": "λ: teacher = softmax(λ·z_aligned + (1−λ)·z_ref). λ>1 extrapolates, λ<0 moves away."},
    )
    lmbda: float = field(
        default=1.0,
        metadata={"help": "Probability that a batch is sampled by the student (else the dataset's completions)."},
    )
    aligned_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The aligned model B (hub id or path)."}
    )
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The reference model A (defaults to the student's starting weights)."}
    )
    loss_token_chunk_size: int = field(default=256, metadata={"help": "Tokens per chunk of the streamed loss."})
    loss_vocab_chunk_size: int | None = field(
        default=None, metadata={"help": "Vocabulary entries per tile of the streamed loss (default: all at once)."}
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Not for on-policy TrRa (its completions are sampled anew each step); refused if set."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.teacher_cache:
            raise ValueError(
                "On-policy TrRa cannot train from a teacher cache: the student samples new completions every step, "
                "so the teachers must score them live. Drop `teacher_cache` (it serves off-policy `trl-realign trra`)."
            )
        # The CLI passes numbers as strings; the checks below must see floats.
        self.realign_lambda = check_realign_lambda(float(self.realign_lambda))
        self.lmbda = float(self.lmbda)
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(
                f"`lmbda` is the probability of an on-policy batch and must lie in [0, 1], got {self.lmbda}."
            )
        check_streamed_loss_options(self)
        if self.teacher_model_name_or_path is not None:
            raise ValueError(
                "On-policy TrRa has two teachers: set `aligned_model_name_or_path` (B) and, if A is not the student's "
                "starting point, `ref_model_name_or_path` (A), instead of `teacher_model_name_or_path`."
            )
