"""
`evaluate`: the λ sweep of the paper's Table 1 and Figure 4 in one call.

It samples n completions per prompt for every λ, scores them, counts their tokens and writes, in `output_dir`:

- `samples.jsonl`: one line per completion (model, λ, prompt, answer, completion, tokens, finished, score);
- `summary.json` and `summary.csv`: one row per (model, λ) with accuracy (Pass@1 averaged over samples), the
  truncation rate (completions that ran out of tokens before EOS), mean generated tokens, and the counts;
- `lambda_sweep.png`: accuracy, truncation rate and mean generated tokens against λ;

and logs the summary as a wandb table when `report_to` includes `"wandb"`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, set_seed

from ..modeling.checks import check_same_tokenizer
from ..modeling.dera import DeRaForCausalLM
from .data import build_prompts, load_eval_dataset
from .completions import SamplingSettings
from .generation import TransformersBackend, accepts_realign_lambda
from .plots import plot_lambda_sweep
from .scoring import Scorer, check_answers, get_scorer, score


DEFAULT_LAMBDAS = [0.0, 0.25, 0.5, 0.75, 1.0]
SAMPLES_FILE = "samples.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
PLOT_FILE = "lambda_sweep.png"


@dataclass
class EvalConfig:
    r"""
    Configuration of [`evaluate`], usable with `TrlParser` (`trl-realign eval --config eval.yaml`).

    Give exactly one of: `model_name_or_path` alone (an InRa checkpoint), `model_name_or_path` with
    `ref_model_name_or_path` (a DeRa pair), or `checkpoints` (plain models, e.g. TrRa students, each labelled by its
    λ).

    Sampling defaults follow the paper (§4.1): 8 samples per prompt, temperature 0.7, top-p 0.95 and no top-k (as
    vLLM); the paper allows 16,384 new tokens, the default here is 4,096 to keep a first run affordable. The dataset
    defaults fit `HuggingFaceH4/MATH-500` (`problem`/`answer` columns, split `test`) with DeepSeek-R1's prompt
    suffix.

    Parameters:
        output_dir (`str`, defaults to `"eval"`): where the samples, summary and plot are written.
        model_name_or_path (`str`, *optional*): an InRa (expanded) checkpoint, or DeRa's aligned model.
        ref_model_name_or_path (`str`, *optional*): DeRa's reference model.
        checkpoints (`list[str]`, *optional*): plain checkpoints evaluated one after another.
        num_adapters (`int`, *optional*): adapter layers of an InRa checkpoint without the `layer_adapter` marker.
        realign_lambdas (`list[float]`, *optional*): the λ grid (InRa/DeRa; defaults to 0, 0.25, 0.5, 0.75, 1), or
            one λ label per checkpoint (required with `checkpoints`).
        dataset_name (`str`, *optional*): a hub id, a local `.json`/`.jsonl`/`.parquet`/`.csv` file or a local folder.
        dataset_config (`str`, *optional*): the dataset's configuration name.
        dataset_split (`str`, defaults to `"test"`): the split (a single local file is always split `"train"`).
        prompt_column, answer_column (`str`): columns with the question (text or chat messages) and the gold answer.
        prompt_template (`str`): how a text prompt becomes the user turn; `{prompt}` is replaced by the question.
        system_prompt (`str`, *optional*): a system turn put before every prompt (needs the chat template).
        use_chat_template (`bool`, defaults to `True`): format prompts with the tokenizer's chat template.
        max_prompts (`int`, *optional*): evaluate only the first `max_prompts` rows.
        num_samples (`int`, defaults to `8`): completions per prompt and λ.
        temperature, top_p, top_k: sampling parameters; `temperature=0` is greedy (then `num_samples` must be 1).
        max_new_tokens (`int`, defaults to `4096`): the length limit of a completion.
        batch_size (`int`, defaults to `8`): prompts per `generate()` call (each expands to `num_samples` rows); with
            the vLLM backend, requests in flight.
        scorer (`str`, defaults to `"math_verify"`): `"math_verify"` or `"exact_match"` (or pass a callable to
            [`evaluate`]).
        score_truncated (`bool`, defaults to `False`): also score completions that reached `max_new_tokens` without
            EOS. By default they score 0: an unfinished trace has no final answer, whatever number it stopped on.
        seed (`int`, defaults to `42`): reset before each model's generation, so every model gets the same draws.
        dtype, attn_implementation, device: how models given as paths are loaded and where they run.
        report_to (`list[str]`): `["wandb"]` logs the summary table, the samples and the plot to wandb (into the active
            run if there is one); without `"wandb"` (or `"all"`) nothing is logged, even with a run open.
        run_name (`str`, *optional*): the wandb run name when `evaluate` starts the run.
        disable_tqdm (`bool`, defaults to `False`): hide the progress bar.
        backend (`str`, defaults to `"transformers"`): `"transformers"` (`generate()` in this process) or `"vllm"`
            (an OpenAI-compatible vLLM server; InRa checkpoints and plain checkpoints given as paths, not DeRa).
        vllm_base_url (`str`, *optional*): a running vLLM server (e.g. `http://127.0.0.1:8000`) serving the one
            model to evaluate.
        vllm_python (`str`, *optional*): instead, the vLLM environment's python: `evaluate` starts a server per
            checkpoint (InRa through the trl-realign-vllm plugin) on 127.0.0.1 and stops it afterwards; its log is
            `output_dir/vllm_server_<i>.log`.
        vllm_server_args (`str`, *optional*): more server arguments, shell-quoted (e.g. `"--max-model-len 8192"`); an
            InRa checkpoint's routing is merged into their `--hf-overrides`, and without `--dtype` the server gets
            `dtype` (for `"auto"`, the checkpoint's own).
        vllm_startup_timeout (`float`, defaults to `600`): seconds a started server may take to load.
        vllm_request_timeout (`float`, defaults to `3600`): seconds one request (n completions) may take.
    """

    output_dir: str = field(default="eval", metadata={"help": "Where samples, summary and plot are written."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "InRa (expanded) checkpoint, or DeRa's aligned model with --ref_model_name_or_path."},
    )
    ref_model_name_or_path: str | None = field(default=None, metadata={"help": "DeRa's reference model."})
    checkpoints: list[str] | None = field(
        default=None,
        metadata={"help": "Plain checkpoints (e.g. TrRa students), one λ label each in --realign_lambdas."},
    )
    num_adapters: int | None = field(
        default=None, metadata={"help": "Adapter layers of an InRa checkpoint without the `layer_adapter` marker."}
    )
    realign_lambdas: list[float] | None = field(
        default=None, metadata={"help": "λ grid (InRa/DeRa, default 0 0.25 0.5 0.75 1), or one λ per checkpoint."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id, local data file or folder."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "Split (a single local file is split 'train')."})
    prompt_column: str = field(default="problem", metadata={"help": "Column with the question (text or messages)."})
    answer_column: str = field(default="answer", metadata={"help": "Column with the gold answer."})
    prompt_template: str = field(
        default="{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}.",
        metadata={"help": "User turn for a text prompt; {prompt} is replaced by the question."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System turn before every prompt."})
    use_chat_template: bool = field(default=True, metadata={"help": "Format prompts with the chat template."})
    max_prompts: int | None = field(default=None, metadata={"help": "Evaluate only the first N prompts."})
    num_samples: int = field(default=8, metadata={"help": "Completions per prompt and λ (Pass@1 is their mean)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 is greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 disables it (as vLLM's default)."})
    max_new_tokens: int = field(default=4096, metadata={"help": "Maximum generated tokens per completion."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call (vLLM: requests in flight)."})
    scorer: str = field(default="math_verify", metadata={"help": "'math_verify' or 'exact_match'."})
    score_truncated: bool = field(
        default=False,
        metadata={"help": "Score completions that hit max_new_tokens without EOS (by default they score 0)."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed, reset before each model's generation."})
    dtype: str = field(
        default="auto", metadata={"help": "dtype of models loaded from paths ('auto', 'bfloat16', ...)."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention implementation to load with."})
    device: str | None = field(
        default=None, metadata={"help": "Device for models loaded from paths (default: cuda if available)."}
    )
    report_to: list[str] = field(default_factory=list, metadata={"help": "Loggers, e.g. 'wandb'."})
    run_name: str | None = field(default=None, metadata={"help": "wandb run name."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})
    backend: str = field(
        default="transformers",
        metadata={"help": "'transformers' (generate() here) or 'vllm' (an OpenAI-compatible vLLM server)."},
    )
    vllm_base_url: str | None = field(
        default=None, metadata={"help": "A running vLLM server, e.g. http://127.0.0.1:8000."}
    )
    vllm_python: str | None = field(
        default=None, metadata={"help": "The vLLM environment's python: start (and stop) a server per checkpoint."}
    )
    vllm_server_args: str | None = field(
        default=None, metadata={"help": "More vLLM server arguments, shell-quoted, e.g. '--max-model-len 8192'."}
    )
    vllm_startup_timeout: float = field(
        default=600.0, metadata={"help": "Seconds a started vLLM server may take to load."}
    )
    vllm_request_timeout: float = field(default=3600.0, metadata={"help": "Seconds one vLLM request may take."})

    def __post_init__(self):
        if self.num_samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("`num_samples`, `batch_size` and `max_new_tokens` must be positive integers.")
        if self.temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 is greedy), got {self.temperature}.")
        if self.temperature == 0 and self.num_samples > 1:
            raise ValueError(
                f"Greedy decoding (`temperature=0`) gives the same completion every time; set `num_samples=1` "
                f"instead of {self.num_samples}, or sample with `temperature>0`."
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must lie in (0, 1], got {self.top_p}.")
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"`prompt_template` must contain '{{prompt}}', got {self.prompt_template!r}.")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self._check_backend()

    def _check_backend(self):
        if self.backend not in ("transformers", "vllm"):
            raise ValueError(f"`backend` must be 'transformers' or 'vllm', got {self.backend!r}.")
        if self.backend == "transformers":
            given = [name for name in ("vllm_base_url", "vllm_python", "vllm_server_args") if getattr(self, name)]
            if given:
                raise ValueError(f"{given} apply to the vLLM backend only; set `backend='vllm'` too.")
            return
        if (self.vllm_base_url is None) == (self.vllm_python is None):
            raise ValueError(
                "`backend='vllm'` needs exactly one of `vllm_base_url` (a running server) and `vllm_python` (the vLLM "
                "environment's python, to start one)."
            )
        if self.vllm_base_url is not None and self.vllm_server_args:
            raise ValueError("`vllm_server_args` are for a server `evaluate` starts; the one at `vllm_base_url` runs.")
        if self.vllm_startup_timeout <= 0 or self.vllm_request_timeout <= 0:
            raise ValueError("`vllm_startup_timeout` and `vllm_request_timeout` must be positive (seconds).")


@dataclass
class _Candidate:
    """One model to sweep: `mixes` if one batch may hold several λ (InRa, DeRa); else `realign_lambdas` is a label."""

    method: str
    label: str
    realign_lambdas: list[float]
    mixes: bool
    load: Callable[[], tuple[PreTrainedModel, object]]
    path: str | None = None  # the checkpoint, when given as one (the vLLM backend serves it)


def _model_init_kwargs(args: EvalConfig) -> dict:
    kwargs = {"dtype": args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)}
    if args.attn_implementation is not None:
        kwargs["attn_implementation"] = args.attn_implementation
    return kwargs


def _device(args: EvalConfig) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _candidates(args, model, ref_model, checkpoints, tokenizer) -> list[_Candidate]:
    """Resolve which models to sweep, raising on ambiguous or missing input before anything is loaded."""
    if ref_model is not None and model is None:
        raise ValueError("`ref_model` is DeRa's reference model; pass the aligned model as `model` too.")
    in_memory = model is not None or checkpoints is not None
    by_path = args.model_name_or_path is not None or args.checkpoints is not None
    if in_memory and by_path:
        raise ValueError(
            "Pass the models either as objects (`model`, `ref_model`, `checkpoints`) or as paths in the config "
            "(`model_name_or_path`, `ref_model_name_or_path`, `checkpoints`), not both."
        )
    if not in_memory and not by_path:
        raise ValueError(
            "No model to evaluate: set `model_name_or_path` (InRa), `model_name_or_path` and `ref_model_name_or_path` "
            "(DeRa), or `checkpoints` (plain models with one λ label each)."
        )
    if args.ref_model_name_or_path is not None and args.model_name_or_path is None:
        raise ValueError(
            "`ref_model_name_or_path` is DeRa's reference; set `model_name_or_path` to the aligned model."
        )
    mixing = model is not None or args.model_name_or_path is not None
    if mixing and (checkpoints or args.checkpoints):
        raise ValueError("Evaluate either one InRa/DeRa model or a list of `checkpoints`, not both in one call.")
    objects = [model] if model is not None else [c for c in checkpoints or [] if not isinstance(c, str)]
    if objects and tokenizer is None:
        raise ValueError("Models passed as objects need their tokenizer: pass `tokenizer=`.")
    lambdas = list(args.realign_lambdas) if args.realign_lambdas is not None else None
    if mixing:
        candidates = [_mixing_candidate(args, model, ref_model, tokenizer, lambdas)]
    else:
        checkpoints = list(checkpoints if checkpoints is not None else args.checkpoints)
        candidates = _checkpoint_candidates(args, checkpoints, tokenizer, lambdas)
    if args.backend == "vllm":
        _check_vllm_candidates(args, candidates)
    return candidates


def _check_vllm_candidates(args: EvalConfig, candidates: list[_Candidate]) -> None:
    if any(candidate.method == "dera" for candidate in candidates):
        raise ValueError(
            "DeRa pairs run on the transformers backend only (vLLM would need both models in one engine); drop "
            "`backend='vllm'`."
        )
    if any(candidate.path is None for candidate in candidates):
        raise ValueError(
            "The vLLM backend serves checkpoints from paths: save the model (`save_pretrained`, with its tokenizer) "
            "and pass its folder (`model_name_or_path` or `checkpoints`), or use `backend='transformers'`."
        )
    if args.vllm_base_url is not None and len(candidates) > 1:
        raise ValueError(
            f"A vLLM server serves one model, and {len(candidates)} checkpoints were given with `vllm_base_url`: "
            "evaluate one per call, or give `vllm_python` to start a server for each."
        )


def _mixing_candidate(args, model, ref_model, tokenizer, lambdas) -> _Candidate:
    """InRa or DeRa: one model, every λ, several λ per batch."""
    lambdas = lambdas if lambdas is not None else list(DEFAULT_LAMBDAS)
    if not lambdas:
        raise ValueError("`realign_lambdas` is empty; give at least one λ.")
    if model is not None:
        if ref_model is not None:
            model = DeRaForCausalLM(model, ref_model)
        elif not accepts_realign_lambda(model):
            raise ValueError(
                f"{type(model).__name__} does not take `realign_lambda`. Pass an `InRaForCausalLM`, a DeRa pair "
                "(`model=` the aligned model, `ref_model=` the reference), or plain models as `checkpoints=` with "
                "one λ label each."
            )
        method = "dera" if isinstance(model, DeRaForCausalLM) else "inra"
        label = getattr(model, "name_or_path", "") or method
        return _Candidate(method, label, lambdas, True, lambda: (model.eval(), tokenizer))

    device, init_kwargs = _device(args), _model_init_kwargs(args)
    path, ref_path = args.model_name_or_path, args.ref_model_name_or_path
    if ref_path is not None:

        def load_dera():
            aligned_tokenizer = AutoTokenizer.from_pretrained(path)
            check_same_tokenizer(aligned_tokenizer, AutoTokenizer.from_pretrained(ref_path), "reference model")
            dera = DeRaForCausalLM(
                AutoModelForCausalLM.from_pretrained(path, **init_kwargs).to(device),
                AutoModelForCausalLM.from_pretrained(ref_path, **init_kwargs).to(device),
            )
            return dera.eval(), aligned_tokenizer

        return _Candidate("dera", f"{path} | {ref_path}", lambdas, True, load_dera)

    def load_inra():
        from ..modeling.inra import InRaForCausalLM

        inra = InRaForCausalLM.from_pretrained(path, num_adapters=args.num_adapters, **init_kwargs)
        return inra.to(device).eval(), AutoTokenizer.from_pretrained(path)

    return _Candidate("inra", path, lambdas, True, load_inra, path)


def _checkpoint_candidates(args, checkpoints, tokenizer, lambdas) -> list[_Candidate]:
    """Plain models, loaded one at a time; the λ of each is only its label."""
    if not checkpoints:
        raise ValueError("`checkpoints` is empty; give at least one model.")
    if lambdas is None or len(lambdas) != len(checkpoints):
        raise ValueError(
            f"Got {len(checkpoints)} checkpoints but {'no' if lambdas is None else len(lambdas)} `realign_lambdas`: "
            "give one λ label per checkpoint (the λ it was trained for), in the same order."
        )
    device, init_kwargs = _device(args), _model_init_kwargs(args)
    candidates = []
    for i, (checkpoint, lam) in enumerate(zip(checkpoints, lambdas)):
        path = checkpoint if isinstance(checkpoint, str) else None
        if isinstance(checkpoint, str):
            label = checkpoint

            def load(path=checkpoint):
                model = AutoModelForCausalLM.from_pretrained(path, **init_kwargs).to(device).eval()
                return model, tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)

        else:
            label = getattr(checkpoint, "name_or_path", "") or f"checkpoint-{i}"

            def load(model=checkpoint):
                return model.eval(), tokenizer

        candidates.append(_Candidate("checkpoints", label, [float(lam)], False, load, path))
    return candidates


def summarize(records: Sequence[dict]) -> list[dict]:
    """
    One row per (model, λ), in order of first appearance: accuracy (mean score, i.e. Pass@1 averaged over samples),
    truncation rate (the fraction of completions without EOS), mean generated tokens, and the prompt and sample counts.
    """
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["method"], record["model"], record["realign_lambda"]), []).append(record)
    summary = []
    for (method, model, realign_lambda), rows in groups.items():
        n = len(rows)
        summary.append(
            {
                "method": method,
                "model": model,
                "realign_lambda": realign_lambda,
                "accuracy": sum(row["score"] for row in rows) / n,
                "truncation_rate": sum(not row["finished"] for row in rows) / n,
                "mean_tokens": sum(row["num_tokens"] for row in rows) / n,
                "num_prompts": len({row["prompt_index"] for row in rows}),
                "num_samples": n,
            }
        )
    return summary


def _load_examples(args: EvalConfig, dataset) -> tuple[list, list[str]]:
    """The prompts and gold answers of the evaluation set, checked and cut to `max_prompts`."""
    examples = load_eval_dataset(
        dataset if dataset is not None else args.dataset_name, args.dataset_config, args.dataset_split
    )
    for column in (args.prompt_column, args.answer_column):
        if column not in examples.column_names:
            raise ValueError(
                f"The dataset has no column {column!r} (columns: {examples.column_names}); set `prompt_column` and "
                "`answer_column`."
            )
    if args.max_prompts is not None:
        examples = examples.select(range(min(args.max_prompts, len(examples))))
    if len(examples) == 0:
        raise ValueError("The evaluation dataset is empty.")
    return examples[args.prompt_column], [str(answer) for answer in examples[args.answer_column]]


def _wandb_enabled(args: EvalConfig) -> bool:
    """As the `Trainer`: `report_to` alone decides, so a wandb run the caller has open gets nothing unless asked."""
    if "wandb" in args.report_to:
        return True
    if "all" not in args.report_to:
        return False
    from transformers.integrations import is_wandb_available

    return is_wandb_available()


def _log_to_wandb(args: EvalConfig, summary: list[dict], records: list[dict], plot_path: str | None) -> None:
    import wandb

    run, started = wandb.run, False
    if run is None:
        run, started = wandb.init(name=args.run_name, config=asdict(args), job_type="eval"), True
    columns = list(summary[0])
    sample_columns = ["method", "model", "realign_lambda", "prompt_index", "sample_index", "completion", "answer"]
    sample_columns += ["num_tokens", "finished", "score"]
    payload = {
        "eval/lambda_sweep": wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in summary]),
        "eval/samples": wandb.Table(columns=sample_columns, data=[[r[c] for c in sample_columns] for r in records]),
    }
    if plot_path is not None:
        payload["eval/lambda_sweep_plot"] = wandb.Image(plot_path)
    run.log(payload)
    if started:
        run.finish()


def evaluate(
    args: EvalConfig | None = None,
    *,
    model: PreTrainedModel | None = None,
    ref_model: PreTrainedModel | None = None,
    checkpoints: Sequence[PreTrainedModel | str] | None = None,
    tokenizer=None,
    dataset=None,
    scorer: str | Scorer | None = None,
) -> list[dict]:
    """
    Sweep λ: sample, score and count tokens for every λ, write the outputs to `args.output_dir`, return the summary.

    Args:
        args ([`EvalConfig`], *optional*): the configuration (defaults to `EvalConfig()`).
        model: an `InRaForCausalLM` (one batch then holds several λ), or DeRa's aligned model together with
            `ref_model`, or a [`DeRaForCausalLM`]. Overrides `args.model_name_or_path`.
        ref_model: DeRa's reference model.
        checkpoints: plain models or paths (e.g. TrRa students for several λ); `args.realign_lambdas` labels them.
        tokenizer: the tokenizer (required with in-memory models; loaded from the paths otherwise).
        dataset: a `datasets.Dataset` used instead of `args.dataset_name`.
        scorer: `"math_verify"`, `"exact_match"` or a callable `(completion, answer) -> float in [0, 1]`; overrides
            `args.scorer`.

    Returns:
        `list[dict]`: one row per (model, λ) with `method`, `model`, `realign_lambda`, `accuracy`, `truncation_rate`,
        `mean_tokens`, `num_prompts` and `num_samples` (also in `summary.json` / `summary.csv`).
    """
    from tqdm.auto import tqdm

    args = args if args is not None else EvalConfig()
    scorer_fn = get_scorer(scorer if scorer is not None else args.scorer)
    candidates = _candidates(args, model, ref_model, checkpoints, tokenizer)
    raw_prompts, answers = _load_examples(args, dataset)
    check_answers(answers, scorer_fn)  # before any generation
    os.makedirs(args.output_dir, exist_ok=True)

    sampling = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k)

    total = len(raw_prompts) * sum(len(candidate.realign_lambdas) for candidate in candidates)
    records = []
    with tqdm(total=total, desc="λ sweep", unit="prompt", disable=args.disable_tqdm) as progress:
        for index, candidate in enumerate(candidates):
            with _open_backend(args, candidate, index, progress) as complete:
                prompts = build_prompts(raw_prompts, complete.tokenizer, args)
                # Every prompt with every λ, λ innermost: the rows of one prompt share a length, so batches pad little
                rows = [(i, lam) for i in range(len(prompts)) for lam in candidate.realign_lambdas]
                progress.set_postfix_str(candidate.label)
                set_seed(args.seed)
                lambdas = [lam for _, lam in rows] if candidate.mixes else None
                completions = complete([prompts[i] for i, _ in rows], lambdas, sampling, args.num_samples)
            candidate_records = []
            for (i, lam), samples in zip(rows, completions):
                for j, completion in enumerate(samples):
                    candidate_records.append(
                        {
                            "method": candidate.method,
                            "model": candidate.label,
                            "realign_lambda": lam,
                            "prompt_index": i,
                            "sample_index": j,
                            "prompt": raw_prompts[i],
                            "answer": answers[i],
                            "completion": completion.text,
                            "num_tokens": completion.num_tokens,
                            "finished": completion.finished,
                            "score": _score(args, scorer_fn, completion, answers[i]),
                        }
                    )
            records += sorted(candidate_records, key=lambda record: record["realign_lambda"])  # stable: by prompt
    summary = summarize(records)
    _write_outputs(args.output_dir, records, summary)
    plot_path = plot_lambda_sweep(summary, os.path.join(args.output_dir, PLOT_FILE), title=_title(args))
    if _wandb_enabled(args):
        _log_to_wandb(args, summary, records, plot_path)
    return summary


@contextlib.contextmanager
def _open_backend(args: EvalConfig, candidate: _Candidate, index: int, progress):
    """The candidate's backend: its model loaded here (transformers), or served by vLLM; released on exit."""
    add_special_tokens = not args.use_chat_template
    if args.backend == "vllm":
        try:
            from .vllm_session import open_vllm_backend
        except ImportError as exc:
            raise ImportError(f"The vLLM backend needs httpx: `pip install 'trl-realign[vllm]'` ({exc}).") from exc

        with open_vllm_backend(
            candidate.path,
            inra=candidate.mixes,
            num_adapters=args.num_adapters,
            base_url=args.vllm_base_url,
            python=args.vllm_python,
            server_args=args.vllm_server_args,
            dtype=args.dtype,
            log_path=os.path.join(args.output_dir, f"vllm_server_{index}.log"),
            startup_timeout=args.vllm_startup_timeout,
            request_timeout=args.vllm_request_timeout,
            add_special_tokens=add_special_tokens,
            max_concurrency=args.batch_size,
            seed=args.seed,
            progress=progress,
        ) as backend:
            yield backend
        return
    loaded_model, loaded_tokenizer = candidate.load()
    if loaded_tokenizer.pad_token is None:
        loaded_tokenizer = _with_pad_token(loaded_tokenizer)
    yield TransformersBackend(
        loaded_model, loaded_tokenizer, batch_size=args.batch_size, add_special_tokens=add_special_tokens,
        progress=progress,
    )  # fmt: skip


def _score(args: EvalConfig, scorer_fn: Scorer, completion, answer: str) -> float:
    if not completion.finished and not args.score_truncated:
        return 0.0
    return score(scorer_fn, completion.text, answer)


def _with_pad_token(tokenizer):
    if tokenizer.eos_token is None:
        raise ValueError(
            "The tokenizer has neither a pad token nor an EOS token to pad with; set `tokenizer.pad_token`."
        )
    tokenizer = copy.deepcopy(tokenizer)  # the caller's tokenizer is left as it was
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _title(args: EvalConfig) -> str | None:
    return f"{args.dataset_name}" if isinstance(args.dataset_name, str) else None


def _write_outputs(output_dir: str, records: list[dict], summary: list[dict]) -> None:
    with open(os.path.join(output_dir, SAMPLES_FILE), "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(os.path.join(output_dir, SUMMARY_JSON), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output_dir, SUMMARY_CSV), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
