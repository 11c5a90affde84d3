"""
The offline quickstart: TrRa on a synthetic arithmetic task, on CPU, in a few minutes (`trl-realign quickstart`).

Stages (models are cached on disk under `output_dir/models`, so a second run only evaluates):
1. the reference model A: a tiny Qwen2 trained from scratch to add numbers column by column (long traces);
2. the aligned model B: A fine-tuned on concise solutions (no check, sometimes no columns), as DeepScaleR is
   R1-Distill made concise;
3. TrRa students: A realigned toward `softmax(λ·z_B + (1−λ)·z_A)` for each λ, on mixed calibration data;
4. evaluation of A, B and every student on held-out problems with `trl_realign.evaluate`, printed as the paper's
   Table 1 (accuracy, mean generated tokens, token reduction against A) and saved as `table.json`;
5. a layer adapter trained on A with B's concise data, then swept with InRa over λ ∈ {−0.5 … 1.5} in one batch
   (the paper's Figure 4 in miniature), printed and saved as `inra_table.json` with its plot.

Models pass between stages through disk: a model that a `Trainer` has trained keeps accelerate's patched `forward`,
which a `copy.deepcopy` would share with the original.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from .data.arithmetic import arithmetic_dataset, sample_problems
from .data.tokenizer import build_char_tokenizer
from .testing import tiny_causal_lm


logger = logging.getLogger(__name__)


@dataclass
class QuickstartSettings:
    """Sizes and budgets of the demo; the defaults fit in a few minutes on 2 CPU cores."""

    num_train_problems: int = 3000
    num_test_problems: int = 100
    hidden_size: int = 64
    num_hidden_layers: int = 2
    reference_steps: int = 600
    aligned_steps: int = 500
    student_steps: int = 200
    adapter_steps: int = 400
    batch_size: int = 64
    reference_lr: float = 3e-3
    aligned_lr: float = 2e-3
    student_lr: float = 1e-3
    adapter_lr: float = 3e-3
    num_samples: int = 2
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 64
    lambdas: tuple[float, ...] = field(default=(0.5, 1.0, 2.0, 5.0))
    inra_lambdas: tuple[float, ...] = field(default=(-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5))


def _trainer_args(config_cls, output_dir: str, steps: int, lr: float, batch_size: int, seed: int, **extra):
    return config_cls(
        output_dir=output_dir,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        per_device_train_batch_size=batch_size,
        max_length=96,
        use_cpu=True,
        bf16=False,
        # TRL turns it on by default; a tiny model gains nothing from recomputing activations
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=max(steps // 4, 1),
        seed=seed,
        **extra,
    )


def _finish(trainer, path: str, tokenizer) -> str:
    # Written beside the final folder and renamed when complete: an interrupted run never leaves a model to reuse
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, path)
    shutil.rmtree(path + ".run", ignore_errors=True)
    return path


def _load(path: str):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def train_reference(path, tokenizer, train_problems, settings: QuickstartSettings, seed: int) -> str:
    """Model A: trained from scratch to write the columns, answer, then check (the long style)."""
    model = tiny_causal_lm(
        "qwen2", seed=seed, vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_hidden_layers, intermediate_size=4 * settings.hidden_size,
        num_attention_heads=4, num_key_value_heads=4,
    )
    args = _trainer_args(SFTConfig, path + ".run", settings.reference_steps, settings.reference_lr,
                         settings.batch_size, seed)
    trainer = SFTTrainer(model=model, args=args, train_dataset=arithmetic_dataset(train_problems, "long", seed),
                         processing_class=tokenizer)
    trainer.train()
    return _finish(trainer, path, tokenizer)


def train_aligned(path, reference_path, tokenizer, train_problems, settings: QuickstartSettings, seed: int) -> str:
    """Model B: A fine-tuned on concise solutions (mostly stopping at the answer, sometimes answering at once)."""
    args = _trainer_args(SFTConfig, path + ".run", settings.aligned_steps, settings.aligned_lr, settings.batch_size,
                         seed)
    trainer = SFTTrainer(model=_load(reference_path), args=args,
                         train_dataset=arithmetic_dataset(train_problems, "aligned", seed), processing_class=tokenizer)
    trainer.train()
    return _finish(trainer, path, tokenizer)


def train_student(path, reference_path, aligned_path, realign_lambda, tokenizer, train_problems,
                  settings: QuickstartSettings, seed: int) -> str:
    """A TrRa student: A realigned toward the λ-mixture of A and B, on calibration data written in both styles."""
    from .trainers import TrRaConfig, TrRaTrainer

    args = _trainer_args(TrRaConfig, path + ".run", settings.student_steps, settings.student_lr, settings.batch_size,
                         seed, realign_lambda=realign_lambda)
    trainer = TrRaTrainer(model=_load(reference_path), aligned_model=_load(aligned_path), args=args,
                          train_dataset=arithmetic_dataset(train_problems, "mixed", seed), processing_class=tokenizer)
    trainer.train()
    return _finish(trainer, path, tokenizer)


def train_adapter(path, reference_path, tokenizer, train_problems, settings: QuickstartSettings, seed: int) -> str:
    """A layer adapter on A (the original layers frozen), trained by SFT on B's concise data: A + adapter is InRa."""
    from .trainers import LayerAdapterSFTConfig, LayerAdapterSFTTrainer

    args = _trainer_args(LayerAdapterSFTConfig, path + ".run", settings.adapter_steps, settings.adapter_lr,
                         settings.batch_size, seed)
    trainer = LayerAdapterSFTTrainer(model=_load(reference_path), args=args,
                                     train_dataset=arithmetic_dataset(train_problems, "aligned", seed),
                                     processing_class=tokenizer)
    trainer.train()
    return _finish(trainer, path, tokenizer)


def _eval_config(output_dir: str, lambdas, settings: QuickstartSettings, seed: int):
    from .evaluation import EvalConfig

    return EvalConfig(
        output_dir=output_dir, realign_lambdas=list(lambdas), prompt_column="prompt", answer_column="answer",
        prompt_template="{prompt}", use_chat_template=False, num_samples=settings.num_samples,
        temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens,
        batch_size=max(settings.num_test_problems, 1), seed=seed, dtype="float32", device="cpu",
    )


def format_table(rows: list[dict], first_column: str = "model") -> str:
    header = f"{first_column:<20}{'accuracy %':>12}{'mean tokens':>14}{'token reduction %':>20}"
    lines = [header, "-" * len(header)]
    for row in rows:
        reduction = "–" if row["token_reduction"] is None else f"{row['token_reduction']:.2f}"
        lines.append(f"{row['name']:<20}{100 * row['accuracy']:>12.2f}{row['mean_tokens']:>14.1f}{reduction:>20}")
    return "\n".join(lines)


def _with_reduction(rows: list[dict], base_tokens: float) -> list[dict]:
    for row in rows:
        row["token_reduction"] = 100.0 * (1 - row["mean_tokens"] / base_tokens) if row.get("name") != "A" else None
    return rows


def run_quickstart(output_dir: str = "quickstart_output", lambdas=(0.5, 1.0, 2.0, 5.0), seed: int = 0,
                   settings: QuickstartSettings | None = None) -> dict:
    """
    Run every stage (reusing cached models) and return both tables; also writes `output_dir/table.json`,
    `output_dir/inra_table.json` and the evaluation folders `output_dir/eval_trra` and `output_dir/eval_inra`
    (samples, summaries, plots).
    """
    from .data.arithmetic import score_answer
    from .evaluation import evaluate
    from .modeling.inra import InRaForCausalLM

    settings = settings or QuickstartSettings()
    settings.lambdas = tuple(float(x) for x in lambdas)
    os.makedirs(output_dir, exist_ok=True)
    models_dir = os.path.join(output_dir, "models")
    tokenizer = build_char_tokenizer()
    train_problems = sample_problems(settings.num_train_problems, seed=seed)
    test_problems = sample_problems(settings.num_test_problems, seed=seed + 1, exclude=set(train_problems))
    test_set = arithmetic_dataset(test_problems, "short", seed)

    # Cached models are reused only if they were trained with the same settings
    fingerprint = json.dumps({**asdict(settings), "lambdas": None, "inra_lambdas": None, "seed": seed},
                             sort_keys=True)
    stamp = os.path.join(models_dir, "settings.json")
    if os.path.exists(stamp) and open(stamp).read() != fingerprint:
        raise ValueError(
            f"{models_dir} holds models trained with other settings; pass another --output_dir or delete that folder."
        )
    os.makedirs(models_dir, exist_ok=True)
    with open(stamp, "w") as f:
        f.write(fingerprint)

    def cached(name, train_fn):
        path = os.path.join(models_dir, name)
        if os.path.exists(os.path.join(path, "config.json")):
            logger.info("Reusing %s from %s", name, path)
            return path
        return train_fn(path)

    stages = ["A", "B", *(f"TrRa λ={lam:g}" for lam in settings.lambdas), "evaluation", "adapter", "InRa sweep"]
    progress = tqdm(total=len(stages), desc="quickstart", unit="stage")

    def stage(description):
        progress.set_postfix_str(description)
        progress.refresh()

    stage("training A (long traces)")
    path_a = cached("A", lambda p: train_reference(p, tokenizer, train_problems, settings, seed))
    progress.update()
    stage("training B (concise)")
    path_b = cached("B", lambda p: train_aligned(p, path_a, tokenizer, train_problems, settings, seed))
    progress.update()
    students = {}
    for lam in settings.lambdas:
        stage(f"TrRa student λ={lam:g}")
        students[lam] = cached(
            f"trra_lambda{lam:g}",
            lambda p, lam=lam: train_student(p, path_a, path_b, lam, tokenizer, train_problems, settings, seed),
        )
        progress.update()

    # Table 1: A is λ=0, B is λ=1, each student its own λ
    stage("evaluating A, B and the students")
    named = [("A", path_a, 0.0), *((f"TrRa λ={lam:g}", students[lam], lam) for lam in settings.lambdas),
             ("B", path_b, 1.0)]
    summary = evaluate(
        _eval_config(os.path.join(output_dir, "eval_trra"), [lam for _, _, lam in named], settings, seed),
        checkpoints=[path for _, path, _ in named], tokenizer=tokenizer, dataset=test_set, scorer=score_answer,
    )
    rows = [{"name": name, "path": path, **row} for (name, path, _), row in zip(named, summary)]
    rows = _with_reduction(rows, rows[0]["mean_tokens"])
    progress.update()

    stage("training the layer adapter on A")
    path_adapter = cached("A_layer_adapter", lambda p: train_adapter(p, path_a, tokenizer, train_problems, settings, seed))
    progress.update()
    stage("InRa λ sweep")
    inra = InRaForCausalLM.from_pretrained(path_adapter, dtype=torch.float32).eval()
    inra_summary = evaluate(
        _eval_config(os.path.join(output_dir, "eval_inra"), settings.inra_lambdas, settings, seed),
        model=inra, tokenizer=tokenizer, dataset=test_set, scorer=score_answer,
    )
    inra_rows = [{"name": f"λ={row['realign_lambda']:g}", **row} for row in inra_summary]
    base = next((row["mean_tokens"] for row in inra_rows if row["realign_lambda"] == 0.0), rows[0]["mean_tokens"])
    inra_rows = _with_reduction(inra_rows, base)
    progress.update()
    progress.close()

    samples = f"{len(test_problems)} held-out problems, {settings.num_samples} samples each, T={settings.temperature}"
    print(f"\nTrRa on column addition ({samples}, top-p={settings.top_p}); token reduction against A:\n"
          f"{format_table(rows)}")
    print(f"\nInRa: A + a layer adapter trained on B's data, one model, λ chosen at generation time ({samples}); "
          f"token reduction against λ=0:\n{format_table(inra_rows, 'λ')}")
    meta = {"settings": {**asdict(settings), "seed": seed}}
    with open(os.path.join(output_dir, "table.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    with open(os.path.join(output_dir, "inra_table.json"), "w") as f:
        json.dump({**meta, "rows": inra_rows}, f, indent=2)
    print(f"Saved {output_dir}/table.json, {output_dir}/inra_table.json and the plots "
          f"{output_dir}/eval_trra/lambda_sweep.png, {output_dir}/eval_inra/lambda_sweep.png")
    return {"trra": rows, "inra": inra_rows}
