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
   (the paper's Figure 4 in miniature), printed and saved as `inra_table.json` with its plot;
6. a second task where B answers at once (the largest digit, `trl_realign.data.digit_max`): A scans the digits, B is
   A fine-tuned to answer directly, and off-policy `TrRaTrainer` (on A's traces) is compared with on-policy
   `OnPolicyTrRaTrainer` (on the student's own samples) at λ ∈ {1, 2}, saved as `direct_answer_table.json`.

Models pass between stages through disk: a model that a `Trainer` has trained keeps accelerate's patched `forward`,
which a `copy.deepcopy` would share with the original.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

from .data.arithmetic import arithmetic_dataset, sample_problems
from .data.tokenizer import build_char_tokenizer
from .testing import tiny_causal_lm


logger = logging.getLogger(__name__)


@dataclass
class DirectAnswerSettings:
    """Budgets of the second stage: a task where the aligned model answers at once (`trl_realign.data.digit_max`)."""

    num_train_problems: int = 2000
    num_test_problems: int = 100
    num_digits: int = 8
    reference_steps: int = 200
    aligned_steps: int = 100
    offpolicy_steps: int = 80
    onpolicy_steps: int = 40
    onpolicy_batch_size: int = 32
    reference_lr: float = 3e-3
    aligned_lr: float = 2e-3
    student_lr: float = 1e-3
    # On-policy sampling: the student's own distribution (T = 1, also the loss temperature), room for A's whole trace
    max_completion_length: int = 32
    max_new_tokens: int = 48
    lambdas: tuple[float, ...] = field(default=(1.0, 2.0))


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
    # The second stage; `None` skips it
    direct_answer: DirectAnswerSettings | None = field(default_factory=DirectAnswerSettings)


@contextlib.contextmanager
def library_output(verbose: bool):
    """
    Unless `verbose`, silence the libraries the quickstart calls for the duration of the block, so that it prints its
    own stage bar and tables only: the progress bars of transformers (a "Loading weights" bar per model) and datasets
    (TRL's tokenization), log records below ERROR (TRL, accelerate, DeepSpeed, ...) and Python warnings (each
    trainer's config repeats the same deprecation). Everything is restored on exit.
    """
    if verbose:
        yield
        return
    import datasets

    saved_logging_disable = logging.root.manager.disable
    transformers_bars, datasets_bars = hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(saved_logging_disable)
        if transformers_bars:
            hf_logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()


def _library_bars() -> bool:
    """Whether the libraries' progress bars are on: off inside a quiet [`library_output`] block."""
    return hf_logging.is_progress_bar_enabled()


def _train(trainer) -> None:
    """`trainer.train()`, without the trainer's per-step bar and printed logs while the libraries are quiet."""
    if not _library_bars():
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    trainer.train()


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


def train_sft(path, model, dataset, steps: int, lr: float, tokenizer, settings: QuickstartSettings, seed: int) -> str:
    """`model` fine-tuned on `dataset` with `SFTTrainer`, written to `path`."""
    args = _trainer_args(SFTConfig, path + ".run", steps, lr, settings.batch_size, seed)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    _train(trainer)
    return _finish(trainer, path, tokenizer)


def _new_model(tokenizer, settings: QuickstartSettings, seed: int):
    return tiny_causal_lm(
        "qwen2", seed=seed, vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_hidden_layers, intermediate_size=4 * settings.hidden_size,
        num_attention_heads=4, num_key_value_heads=4,
    )


def train_reference(path, tokenizer, train_problems, settings: QuickstartSettings, seed: int) -> str:
    """Model A: trained from scratch to write the columns, answer, then check (the long style)."""
    return train_sft(path, _new_model(tokenizer, settings, seed), arithmetic_dataset(train_problems, "long", seed),
                     settings.reference_steps, settings.reference_lr, tokenizer, settings, seed)


def train_aligned(path, reference_path, tokenizer, train_problems, settings: QuickstartSettings, seed: int) -> str:
    """Model B: A fine-tuned on concise solutions (mostly stopping at the answer, sometimes answering at once)."""
    return train_sft(path, _load(reference_path), arithmetic_dataset(train_problems, "aligned", seed),
                     settings.aligned_steps, settings.aligned_lr, tokenizer, settings, seed)


def train_student(path, reference_path, aligned_path, realign_lambda, tokenizer, dataset, steps: int, lr: float,
                  settings: QuickstartSettings, seed: int, teacher_cache: str | None = None) -> str:
    """
    An (off-policy) TrRa student: A realigned toward the λ-mixture of A and B on the completions of `dataset`. With
    `teacher_cache` (see [`capture_teachers`]) the teachers' hidden states are read from it and B is never loaded.
    """
    from .trainers import TrRaConfig, TrRaTrainer

    args = _trainer_args(TrRaConfig, path + ".run", steps, lr, settings.batch_size, seed,
                         realign_lambda=realign_lambda, teacher_cache=teacher_cache)
    teachers = {} if teacher_cache else {"aligned_model": _load(aligned_path)}
    trainer = TrRaTrainer(model=_load(reference_path), args=args, train_dataset=dataset, processing_class=tokenizer,
                          **teachers)
    _train(trainer)
    return _finish(trainer, path, tokenizer)


def capture_teachers(path, reference_path, aligned_path, tokenizer, dataset, settings: QuickstartSettings,
                     seed: int) -> str:
    """A teacher cache of A and B over `dataset`, captured once for all the TrRa students of a stage."""
    from .trainers import TrRaConfig, build_teacher_cache

    args = _trainer_args(TrRaConfig, path + ".run", 1, 1e-5, settings.batch_size, seed, teacher_cache=path,
                         disable_tqdm=not _library_bars())
    build_teacher_cache(_load(reference_path), aligned_path, args, dataset, processing_class=tokenizer)
    shutil.rmtree(path + ".run", ignore_errors=True)
    return path


def train_adapter(path, reference_path, tokenizer, train_problems, settings: QuickstartSettings, seed: int) -> str:
    """A layer adapter on A (the original layers frozen), trained by SFT on B's concise data: A + adapter is InRa."""
    from .trainers import LayerAdapterSFTConfig, LayerAdapterSFTTrainer

    args = _trainer_args(LayerAdapterSFTConfig, path + ".run", settings.adapter_steps, settings.adapter_lr,
                         settings.batch_size, seed)
    trainer = LayerAdapterSFTTrainer(model=_load(reference_path), args=args,
                                     train_dataset=arithmetic_dataset(train_problems, "aligned", seed),
                                     processing_class=tokenizer)
    _train(trainer)
    return _finish(trainer, path, tokenizer)


def train_onpolicy_student(path, reference_path, aligned_path, realign_lambda, tokenizer, prompts,
                           settings: QuickstartSettings, seed: int) -> str:
    """An on-policy TrRa student: A samples completions for `prompts`, each token is trained toward the λ-mixture."""
    from .trainers import OnPolicyTrRaConfig, OnPolicyTrRaTrainer

    direct = settings.direct_answer
    args = OnPolicyTrRaConfig(
        output_dir=path + ".run", max_steps=direct.onpolicy_steps, learning_rate=direct.student_lr,
        lr_scheduler_type="constant", per_device_train_batch_size=direct.onpolicy_batch_size, use_cpu=True, bf16=False,
        gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=max(direct.onpolicy_steps // 4, 1),
        seed=seed, realign_lambda=realign_lambda, max_completion_length=direct.max_completion_length, temperature=1.0,
    )
    trainer = OnPolicyTrRaTrainer(model=_load(reference_path), aligned_model=_load(aligned_path), args=args,
                                  train_dataset=prompts, processing_class=tokenizer)
    _train(trainer)
    return _finish(trainer, path, tokenizer)


def _eval_config(output_dir: str, lambdas, settings: QuickstartSettings, seed: int):
    from .evaluation import EvalConfig

    return EvalConfig(
        output_dir=output_dir, realign_lambdas=list(lambdas), prompt_column="prompt", answer_column="answer",
        prompt_template="{prompt}", use_chat_template=False, num_samples=settings.num_samples,
        temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens,
        batch_size=max(settings.num_test_problems, 1), seed=seed, dtype="float32", device="cpu",
        disable_tqdm=not _library_bars(),
    )


# Columns a table shows when every row has them (the TrRa table's divergences, from `add_divergences`)
_DIVERGENCE_COLUMNS = (("kl_to_a", "KL to A"), ("kl_to_b", "KL to B"))


def format_table(rows: list[dict], first_column: str = "model") -> str:
    extra = [(key, label) for key, label in _DIVERGENCE_COLUMNS if all(key in row for row in rows)]
    header = f"{first_column:<20}{'accuracy %':>12}{'mean tokens':>14}{'token reduction %':>20}"
    header += "".join(f"{label:>10}" for _, label in extra)
    lines = [header, "-" * len(header)]
    for row in rows:
        reduction = "–" if row["token_reduction"] is None else f"{row['token_reduction']:.2f}"
        line = f"{row['name']:<20}{100 * row['accuracy']:>12.2f}{row['mean_tokens']:>14.1f}{reduction:>20}"
        lines.append(line + "".join(f"{row[key]:>10.3f}" for key, _ in extra))
    return "\n".join(lines)


@torch.no_grad()
def add_divergences(rows: list[dict], path_a: str, path_b: str, tokenizer, dataset) -> list[dict]:
    """
    Add to each row (with its model's `path`) `kl_to_a` and `kl_to_b`: the mean per-token KL(model ‖ A) and
    KL(model ‖ B), in nats, of the next-token distributions along `dataset`'s completions (teacher-forced, EOS
    included). Students whose samples look alike (λ=1 and λ=2 land on the same completion length) differ here: λ
    moves the distributions, λ > 1 beyond B, away from A.
    """
    prompts = [tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] for row in dataset]
    completions = [tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for row in dataset]  # fmt: skip
    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    input_ids = torch.full((len(prompts), length), tokenizer.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    # Position t predicts token t + 1: a completion token's distribution sits one position before it
    scored = torch.zeros(len(prompts), length - 1)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        input_ids[i, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        attention_mask[i, : len(prompt) + len(completion)] = 1
        scored[i, len(prompt) - 1 : len(prompt) + len(completion) - 1] = 1

    def log_probs(path):
        logits = _load(path)(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        return torch.log_softmax(logits.float(), dim=-1)

    reference = {"kl_to_a": log_probs(path_a), "kl_to_b": log_probs(path_b)}
    known = {path_a: reference["kl_to_a"], path_b: reference["kl_to_b"]}
    for row in rows:
        own = known[row["path"]] if row["path"] in known else log_probs(row["path"])
        for key, other in reference.items():
            kl = (own.exp() * (own - other)).sum(-1)
            row[key] = float((kl * scored).sum() / scored.sum())
    return rows


def _with_reduction(rows: list[dict], base_tokens: float) -> list[dict]:
    for row in rows:
        row["token_reduction"] = 100.0 * (1 - row["mean_tokens"] / base_tokens) if row.get("name") != "A" else None
    return rows


def _complete_cache(path: str) -> bool:
    from .data.teacher_cache import read_manifest

    return os.path.isdir(path) and bool((read_manifest(path) or {}).get("complete"))


def _teacher_cache_for(models_dir: str, cached, name: str, students: list[str], capture) -> str | None:
    """The stage's teacher cache, captured only if some of its students still have to be trained."""
    if all(os.path.exists(os.path.join(models_dir, student, "config.json")) for student in students):
        return None
    return cached(name, capture)


def run_direct_answer_stage(output_dir: str, cached, tokenizer, settings: QuickstartSettings, seed: int) -> list[dict]:
    """
    The second stage: the largest-digit task, where B answers at once. Trains A (scans the digits) and B (A fine-tuned
    to answer directly), then off-policy TrRa students on A's traces and on-policy TrRa students on their own samples
    at each λ, and evaluates all of them like the first stage. Returns the table's rows; `example` is one completion
    of each model, as the evaluation sampled it.
    """
    from .data.arithmetic import score_answer
    from .data.digit_max import digit_max_dataset, sample_digit_strings
    from .evaluation import evaluate

    direct = settings.direct_answer
    train = sample_digit_strings(direct.num_train_problems, direct.num_digits, seed)
    test = sample_digit_strings(direct.num_test_problems, direct.num_digits, seed + 1, exclude=set(train))
    traces = digit_max_dataset(train, "scan")
    path_a = cached("direct_A", lambda p: train_sft(p, _new_model(tokenizer, settings, seed), traces,
                                                    direct.reference_steps, direct.reference_lr, tokenizer, settings,
                                                    seed))  # fmt: skip
    path_b = cached("direct_B", lambda p: train_sft(p, _load(path_a), digit_max_dataset(train, "direct"),
                                                    direct.aligned_steps, direct.aligned_lr, tokenizer, settings,
                                                    seed))  # fmt: skip
    named = [("A", path_a, 0.0)]
    prompts = traces.select_columns(["prompt"])
    teacher_cache = _teacher_cache_for(
        os.path.join(output_dir, "models"), cached, "direct_teacher_cache", [f"direct_trra_lambda{lam:g}" for lam in direct.lambdas],
        lambda p: capture_teachers(p, path_a, path_b, tokenizer, traces, settings, seed),
    )
    for lam in direct.lambdas:
        off = cached(f"direct_trra_lambda{lam:g}", lambda p, lam=lam: train_student(
            p, path_a, path_b, lam, tokenizer, traces, direct.offpolicy_steps, direct.student_lr, settings, seed,
            teacher_cache=teacher_cache))
        on = cached(f"direct_onpolicy_trra_lambda{lam:g}", lambda p, lam=lam: train_onpolicy_student(
            p, path_a, path_b, lam, tokenizer, prompts, settings, seed))
        named += [(f"off-policy λ={lam:g}", off, lam), (f"on-policy λ={lam:g}", on, lam)]
    named.append(("B", path_b, 1.0))

    eval_dir = os.path.join(output_dir, "eval_direct_answer")
    eval_settings = replace(settings, max_new_tokens=direct.max_new_tokens, num_test_problems=direct.num_test_problems)
    summary = evaluate(
        _eval_config(eval_dir, [lam for _, _, lam in named], eval_settings, seed),
        checkpoints=[path for _, path, _ in named], tokenizer=tokenizer, dataset=digit_max_dataset(test, "direct"),
        scorer=score_answer,
    )
    rows = [{"name": name, "path": path, **row} for (name, path, _), row in zip(named, summary)]
    with open(os.path.join(eval_dir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    for row in rows:
        first = next(s for s in samples if s["model"] == row["model"])
        row["example_prompt"], row["example"] = first["prompt"], first["completion"]
    return _with_reduction(rows, rows[0]["mean_tokens"])


def run_quickstart(output_dir: str = "quickstart_output", lambdas=(0.5, 1.0, 2.0, 5.0), seed: int = 0,
                   settings: QuickstartSettings | None = None, verbose: bool = False) -> dict:
    """
    Run every stage (reusing cached models) and return both tables; also writes `output_dir/table.json`,
    `output_dir/inra_table.json` and the evaluation folders `output_dir/eval_trra` and `output_dir/eval_inra`
    (samples, summaries, plots). Only the quickstart's own stage bar and tables are printed, unless `verbose`, which
    lets the libraries' progress bars, logs and warnings through ([`library_output`]).
    """
    with library_output(verbose):
        return _run_quickstart(output_dir, lambdas, seed, settings)


def _run_quickstart(output_dir: str, lambdas, seed: int, settings: QuickstartSettings | None) -> dict:
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
        if os.path.exists(os.path.join(path, "config.json")) or _complete_cache(path):
            logger.info("Reusing %s from %s", name, path)
            return path
        return train_fn(path)

    stages = ["A", "B", *(f"TrRa λ={lam:g}" for lam in settings.lambdas), "evaluation", "adapter", "InRa sweep"]
    if settings.direct_answer is not None:
        stages.append("direct-answer task")
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
    student_data = arithmetic_dataset(train_problems, "mixed", seed)
    # A and B run once over the students' data; every student then trains from their cached hidden states
    stage("capturing A and B for the students")
    teacher_cache = _teacher_cache_for(
        models_dir, cached, "teacher_cache", [f"trra_lambda{lam:g}" for lam in settings.lambdas],
        lambda p: capture_teachers(p, path_a, path_b, tokenizer, student_data, settings, seed),
    )
    for lam in settings.lambdas:
        stage(f"TrRa student λ={lam:g}")
        students[lam] = cached(
            f"trra_lambda{lam:g}",
            lambda p, lam=lam: train_student(p, path_a, path_b, lam, tokenizer, student_data, settings.student_steps,
                                             settings.student_lr, settings, seed, teacher_cache=teacher_cache),
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
    add_divergences(rows, path_a, path_b, tokenizer, arithmetic_dataset(test_problems, "mixed", seed))
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
    direct_rows = None
    if settings.direct_answer is not None:
        stage("direct-answer task: A, B, off- and on-policy TrRa")
        direct_rows = run_direct_answer_stage(output_dir, cached, tokenizer, settings, seed)
        progress.update()
    progress.close()

    samples = f"{len(test_problems)} held-out problems, {settings.num_samples} samples each, T={settings.temperature}"
    print(f"\nTrRa on column addition ({samples}, top-p={settings.top_p}); token reduction against A; KL to A / to B: "
          f"mean per-token KL(model ‖ A) / KL(model ‖ B) in nats along held-out completions of every style:\n"
          f"{format_table(rows)}")
    print(f"\nInRa: A + a layer adapter trained on B's data, one model, λ chosen at generation time ({samples}); "
          f"token reduction against λ=0:\n{format_table(inra_rows, 'λ')}")
    meta = {"settings": {**asdict(settings), "seed": seed}}
    with open(os.path.join(output_dir, "table.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    with open(os.path.join(output_dir, "inra_table.json"), "w") as f:
        json.dump({**meta, "rows": inra_rows}, f, indent=2)
    tables = {"trra": rows, "inra": inra_rows}
    if direct_rows is not None:
        direct = settings.direct_answer
        test_prompt = direct_rows[0]["example_prompt"]
        print(f"\nLargest digit, where B answers at once ({direct.num_test_problems} held-out problems, "
              f"{settings.num_samples} samples each, T={settings.temperature}, at most {direct.max_new_tokens} tokens): "
              f"off-policy TrRa trains on A's traces, on-policy TrRa on the student's own samples; token reduction "
              f"against A:\n{format_table(direct_rows)}\n\nWhat each model wrote for {test_prompt!r} (truncated: the share "
              f"of all its samples that reached the token limit without EOS, scored 0):")
        for row in direct_rows:
            print(f"  {row['name']:<20}{row['example']!r}  (truncated {100 * row['truncation_rate']:.0f}%)")
        with open(os.path.join(output_dir, "direct_answer_table.json"), "w") as f:
            json.dump({**meta, "rows": direct_rows}, f, indent=2)
        tables["direct_answer"] = direct_rows
    print(f"Saved {output_dir}/table.json, {output_dir}/inra_table.json"
          f"{', ' + output_dir + '/direct_answer_table.json' if direct_rows is not None else ''} and the plots "
          f"under {output_dir}/eval_*/lambda_sweep.png")
    return tables
