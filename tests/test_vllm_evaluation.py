"""
`evaluate(backend="vllm")` against the transformers backend, on a real vLLM server started from the vLLM environment.

Needs that environment (vLLM 0.32 and the trl-realign-vllm plugin; `bash vllm_plugin/scripts/setup_venv.sh` creates it
and prints its python): `TRL_REALIGN_VLLM_PYTHON=/path/to/venv/bin/python pytest tests/test_vllm_evaluation.py`.
Without it the test is skipped and says so. About 3 minutes on 2 CPU cores (two engine loads).
"""

import copy
import json
import os

import pytest
import torch

from trl_realign.evaluation import EvalConfig, evaluate
from trl_realign.testing import spread_weights, tiny_causal_lm


VLLM_PYTHON = os.environ.get("TRL_REALIGN_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON,
    reason="needs the vLLM environment: set TRL_REALIGN_VLLM_PYTHON to its python (vLLM 0.32 + trl-realign-vllm; "
    "vllm_plugin/scripts/setup_venv.sh prints it)",
)

ARITHMETIC = os.path.join(os.path.dirname(__file__), "fixtures", "arithmetic.jsonl")
LAMBDAS = [-0.5, 0.0, 0.5, 1.0, 1.5]
NEW_TOKENS = 16
EOS = 3
# fp32, eager, small blocks (the CPU backend needs blocks of 32), a short context: a tiny engine that loads fast
SERVER_ARGS = "--dtype float32 --enforce-eager --max-model-len 256 --block-size 32 --max-num-seqs 8 --seed 0"


def greedy_ids(model, tokenizer, text, **kwargs) -> list[int]:
    inputs = tokenizer([text], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=EOS, **kwargs)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """An InRa checkpoint (Qwen2, 1 perturbed adapter layer + 2) and a plain Llama, with a second EOS id each that
    their greedy completions reach on some prompts only, so that both finished and truncated samples are counted."""
    from trl_realign.modeling.adapter import add_layer_adapter
    from trl_realign.modeling.inra import InRaForCausalLM

    root = tmp_path_factory.mktemp("vllm-eval")
    base = tiny_causal_lm("qwen2", vocab_size=len(tokenizer), hidden_size=128)
    spread_weights(base, seed=3)
    expanded = add_layer_adapter(copy.deepcopy(base))
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the identity init would make both paths equal; noise stands in for training
        for param in expanded.model.layers[:1].parameters():
            param.add_(torch.randn(param.shape, generator=noise), alpha=0.3)
    plain = tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden_size=128)
    spread_weights(plain, seed=4)
    questions = [json.loads(line)["question"] for line in open(ARITHMETIC)]
    inra = InRaForCausalLM.from_model(expanded)
    paths = {}
    for name, model, kwargs in (("inra", inra, {"realign_lambda": 0.5}), ("plain", plain, {})):
        completions = [greedy_ids(model, tokenizer, q, **kwargs) for q in questions]
        stop_id = next(t for t in completions[0][1:] if any(t not in other for other in completions[1:]))
        model.generation_config.eos_token_id = [EOS, stop_id]
        paths[name] = str(root / name)
        model.save_pretrained(paths[name], **({"save_adapter": False} if name == "inra" else {}))
        tokenizer.save_pretrained(paths[name])
    return paths


def config(tmp_path, backend: str, **overrides) -> EvalConfig:
    kwargs = dict(
        output_dir=str(tmp_path / backend), dataset_name=ARITHMETIC, prompt_column="question",
        prompt_template="{prompt}", use_chat_template=False, temperature=0.0, num_samples=1,
        max_new_tokens=NEW_TOKENS, score_truncated=True, dtype="float32", disable_tqdm=True, backend=backend,
    )  # fmt: skip
    if backend == "transformers":
        kwargs["device"] = "cpu"
    else:
        kwargs.update(vllm_python=VLLM_PYTHON, vllm_server_args=SERVER_ARGS)
    kwargs.update(overrides)
    return EvalConfig(**kwargs)


def records_of(args) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(args.output_dir, "samples.jsonl"))]


def has_a_digit(completion, answer):  # a scorer whose mean is neither 0 nor 1 on these texts
    return float(any(c.isdigit() for c in completion))


@pytest.mark.parametrize("kind", ["inra", "plain"])
def test_vllm_backend_gives_the_transformers_backends_samples(tmp_path, monkeypatch, checkpoints, kind):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = dict(model_name_or_path=checkpoints["inra"], realign_lambdas=LAMBDAS) if kind == "inra" else dict(
        checkpoints=[checkpoints["plain"]], realign_lambdas=[1.0]
    )  # fmt: skip
    hf_args, vllm_args = config(tmp_path, "transformers", **model), config(tmp_path, "vllm", **model)
    hf_summary = evaluate(hf_args, scorer=has_a_digit)
    vllm_summary = evaluate(vllm_args, scorer=has_a_digit)
    hf_records, vllm_records = records_of(hf_args), records_of(vllm_args)
    assert len(vllm_records) == len(hf_records) == 3 * len(model["realign_lambdas"])
    assert vllm_records == hf_records  # texts, token counts, finished flags and scores, sample by sample
    assert vllm_summary == hf_summary
    assert {r["finished"] for r in vllm_records} == {True, False}  # both ways of ending are counted
    assert 0 < sum(r["score"] for r in vllm_records) < len(vllm_records)
    if kind == "inra":  # λ reached the model: the paths differ
        assert len({r["completion"] for r in vllm_records if r["prompt_index"] == 0}) > 1
    log = open(os.path.join(vllm_args.output_dir, "vllm_server_0.log")).read()
    assert ("Resolved architecture: InRaQwen2ForCausalLM" in log) == (kind == "inra")


def test_a_server_that_serves_the_inra_checkpoint_with_the_stock_class_is_refused(tmp_path, monkeypatch, checkpoints):
    # Started by hand without the InRa `--hf-overrides`: the plugin is loaded (and validates λ) but vLLM's own Qwen2
    # class runs all layers in one path, the λ=1 model at every λ. The λ=0 / λ=1 log-probability probe finds it out.
    from trl_realign.evaluation.vllm_backend import VLLMRequestError
    from trl_realign.evaluation.vllm_server import VLLMServer

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    with VLLMServer(VLLM_PYTHON, checkpoints["inra"], SERVER_ARGS, log_path=str(tmp_path / "stock.log")) as server:
        args = config(tmp_path, "vllm", model_name_or_path=checkpoints["inra"], realign_lambdas=[0.0, 1.0],
                      vllm_python=None, vllm_server_args=None, vllm_base_url=server.base_url)  # fmt: skip
        with pytest.raises(VLLMRequestError, match="the same log-probabilities at λ=0 and λ=1"):
            evaluate(args)
    log = open(tmp_path / "stock.log").read()
    assert "Resolved architecture: Qwen2ForCausalLM" in log
    assert log.count("POST /v1/completions") == 3  # the non-numeric λ and the two probes: no sample drawn
