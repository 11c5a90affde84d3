"""TrRa-iter (arXiv 2506.12704 §3.1): realign A toward the previous round's result, several times."""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import os

import torch
from transformers import PreTrainedModel

from .realign_teachers import release_trainer
from .teacher_cache_capture import build_teacher_cache
from .trra_config import TrRaConfig
from .trra_trainer import TrRaTrainer


logger = logging.getLogger(__name__)


def train_trra_iterations(
    model: str | PreTrainedModel,
    aligned_model: str | PreTrainedModel,
    args: TrRaConfig,
    num_iterations: int,
    train_dataset,
    processing_class=None,
    eval_dataset=None,
    **trainer_kwargs,
) -> list[str]:
    """
    Run TrRa `num_iterations` times: iteration k trains a student from A with A as reference and the result of
    iteration k−1 as the aligned model (iteration 1 uses `aligned_model`).

    Each iteration writes its model to `{args.output_dir}/iter{k}` and logs under run name `{args.run_name}-iter{k}`.
    With `args.teacher_cache`, both teachers are captured there once (if not yet), and each later iteration captures
    only its aligned model (the last result) into `{teacher_cache}/iter{k}`: A's hidden states serve every iteration.

    Returns:
        `list[str]`: the output folders, one per iteration; the last holds the final model.
    """
    if num_iterations < 1:
        raise ValueError(f"`num_iterations` must be at least 1, got {num_iterations}.")
    outputs = []
    for k in range(1, num_iterations + 1):
        output_dir = os.path.join(args.output_dir, f"iter{k}")
        run_name = f"{args.run_name or os.path.basename(args.output_dir.rstrip('/'))}-iter{k}"
        iteration_args = dataclasses.replace(args, output_dir=output_dir, run_name=run_name)
        # Every iteration restarts from A's weights, so an in-memory A is copied rather than trained in place; the
        # trainer's default reference is then a frozen copy of those same starting weights
        student = model if isinstance(model, str) else copy.deepcopy(model)
        teachers = {"aligned_model": aligned_model, **trainer_kwargs}
        if args.teacher_cache:
            iteration_args, teachers = _capture_iteration(
                k, model, aligned_model, iteration_args, train_dataset, eval_dataset, processing_class, trainer_kwargs
            )
        trainer = TrRaTrainer(
            model=student,
            args=iteration_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **teachers,
        )
        logger.info("TrRa-iter %d/%d: λ=%s, aligned model = %s", k, num_iterations, args.realign_lambda,
                    aligned_model if isinstance(aligned_model, str) else "in-memory model")
        trainer.train()
        trainer.save_model(output_dir)
        if trainer.accelerator.is_main_process and trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(output_dir)
        trainer.accelerator.wait_for_everyone()
        outputs.append(output_dir)
        aligned_model = output_dir
        release_trainer(trainer)
        # Nothing of iteration k may live while k+1 is built, or the peak doubles from iteration 2 on
        del trainer, student
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return outputs


def _capture_iteration(k, model, aligned_model, args, train_dataset, eval_dataset, processing_class, trainer_kwargs):
    """
    With `teacher_cache`: iteration 1 captures A and B there (unless already complete); iteration k > 1 captures
    only its B (the last result) into `{teacher_cache}/iter{k}`, reusing A's hidden states. Returns the iteration's
    args (pointing at its cache) and the teacher arguments for its trainer (names only: objects were captured).
    """
    cache = args.teacher_cache if k == 1 else os.path.join(args.teacher_cache, f"iter{k}")
    student = model if isinstance(model, str) else copy.deepcopy(model).requires_grad_(True)
    build_teacher_cache(
        student, aligned_model, args, train_dataset, eval_dataset, processing_class, teacher_cache=cache,
        reuse_reference_from=None if k == 1 else args.teacher_cache, **trainer_kwargs,
    )
    teachers = {
        key: value for key, value in {"aligned_model": aligned_model, **trainer_kwargs}.items()
        if key not in ("aligned_model", "ref_model") or isinstance(value, str)
    }
    return dataclasses.replace(args, teacher_cache=cache), teachers
