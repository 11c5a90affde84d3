"""
InRa served by vLLM (the trl-realign-vllm plugin) vs plain vLLM and vs InRa in transformers' `generate`.

Run from the main environment: `python benchmarks/vllm_inra.py`. It builds a small Qwen2 (8 layers, hidden 512, vocab
32k) and its InRa expansion (1 adapter layer), times transformers' `InRaForCausalLM.generate` here, and runs the vLLM
part in the plugin's venv (found or created by `vllm_plugin/scripts/setup_venv.sh`, as the plugin tests do) by calling
this same file there with `--vllm-part`. Greedy, fp32, CPU, 128 new tokens, λ = 0.5, batch 1 and 32; vLLM engines run
eagerly (the dual path is not compiled, so the plain engine is not either) with the same KV cache budget.

Prints one JSON object as its last line:
- `vllm_inra_vs_vllm_plain`: InRa's decode throughput over the plain model's in vLLM (target ≥ 0.55: the original
  layers run twice as many rows);
- `vllm_inra_vs_hf_inra`: InRa in vLLM over InRa in transformers (target ≥ 3 at batch 32);
- `kv_capacity_ratio`: tokens of KV cache InRa holds vs the plain model at the same budget (reported; no target);
- `targets_met`: name -> bool.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_VENV = os.path.join(REPO, "vllm_plugin", "scripts", "setup_venv.sh")
NEW_TOKENS = 128
PROMPT_TOKENS = 32
BATCHES = (1, 32)
REALIGN_LAMBDA = 0.5
TARGETS = {"vllm_inra_vs_vllm_plain": 0.55, "vllm_inra_vs_hf_inra": 3.0}


def prompts(batch: int, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(batch)
    return [[rng.randrange(7, vocab) for _ in range(PROMPT_TOKENS)] for _ in range(batch)]


# ---------------------------------------------------------------------------------------------- main environment
def build_checkpoints(out_dir: str) -> dict:
    import copy

    import torch

    from trl_realign.data.tokenizer import build_char_tokenizer
    from trl_realign.modeling.adapter import add_layer_adapter
    from trl_realign.testing import tiny_causal_lm

    tokenizer = build_char_tokenizer()
    base = tiny_causal_lm("qwen2", vocab_size=32000, hidden_size=512, num_hidden_layers=8)
    expanded = add_layer_adapter(copy.deepcopy(base), num_adapters=1)
    with torch.no_grad():  # an adapter that differs from the identity, as a trained one would
        for param in expanded.model.layers[0].parameters():
            param.add_(torch.randn_like(param), alpha=0.02)
    paths = {"base": os.path.join(out_dir, "base"), "inra": os.path.join(out_dir, "inra")}
    for name, model in (("base", base), ("inra", expanded)):
        model.generation_config.eos_token_id = None
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def time_hf_inra(path: str, batch: int, repeats: int) -> float:
    """Median seconds of one `InRaForCausalLM.generate` of `batch` rows × 128 new tokens."""
    import torch

    from trl_realign.modeling.inra import InRaForCausalLM

    model = InRaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    input_ids = torch.tensor(prompts(batch, 100))
    kwargs = dict(
        attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
        do_sample=False, realign_lambda=REALIGN_LAMBDA,
    )
    with torch.no_grad():
        model.generate(input_ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(input_ids, **kwargs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def vllm_venv_python() -> str:
    result = subprocess.run(["bash", SETUP_VENV], check=True, stdout=subprocess.PIPE, text=True)
    return result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--vllm-part", nargs=2, metavar=("CHECKPOINTS_JSON", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_part:
        return vllm_part(*args.vllm_part, repeats=args.repeats)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    load_before = os.getloadavg()
    python = vllm_venv_python()
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_checkpoints(tmp)
        checkpoints, vllm_out = os.path.join(tmp, "checkpoints.json"), os.path.join(tmp, "vllm.json")
        with open(checkpoints, "w") as f:
            json.dump(paths, f)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)  # the venv must not see the main environment's packages
        env.pop("TRL_REALIGN_DEFAULT_LAMBDA", None)
        subprocess.run(
            [python, os.path.abspath(__file__), "--vllm-part", checkpoints, vllm_out, "--repeats", str(args.repeats)],
            check=True, env=env, stdout=sys.stderr,
        )
        with open(vllm_out) as f:
            vllm = json.load(f)
        hf = {str(b): time_hf_inra(paths["inra"], b, args.repeats if b == 1 else max(1, args.repeats - 1))
              for b in BATCHES}

    result = {"new_tokens": NEW_TOKENS, "prompt_tokens": PROMPT_TOKENS, "realign_lambda": REALIGN_LAMBDA}
    for batch in map(str, BATCHES):
        tokens = int(batch) * NEW_TOKENS
        plain, inra = vllm["seconds"]["plain"][batch], vllm["seconds"]["inra"][batch]
        result[f"batch_{batch}"] = {
            "vllm_plain_tokens_per_s": round(tokens / plain, 1),
            "vllm_inra_tokens_per_s": round(tokens / inra, 1),
            "hf_inra_tokens_per_s": round(tokens / hf[batch], 1),
            "vllm_inra_vs_vllm_plain": round(plain / inra, 3),
            "vllm_inra_vs_hf_inra": round(hf[batch] / inra, 3),
        }
    result["kv_capacity_ratio"] = round(vllm["kv_tokens"]["inra"] / vllm["kv_tokens"]["plain"], 3)
    result["kv_tokens"] = vllm["kv_tokens"]
    result["load_average_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    result["targets_met"] = {
        "vllm_inra_vs_vllm_plain": all(
            result[f"batch_{b}"]["vllm_inra_vs_vllm_plain"] >= TARGETS["vllm_inra_vs_vllm_plain"] for b in BATCHES
        ),
        "vllm_inra_vs_hf_inra": result["batch_32"]["vllm_inra_vs_hf_inra"] >= TARGETS["vllm_inra_vs_hf_inra"],
    }
    print(json.dumps(result))


# ------------------------------------------------------------------------------- vLLM venv (this file, --vllm-part)
def vllm_part(checkpoints_json: str, out_json: str, repeats: int) -> None:
    import gc

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(checkpoints_json) as f:
        paths = json.load(f)
    seconds, kv_tokens = {}, {}
    for name, architecture in (("plain", None), ("inra", "InRaQwen2ForCausalLM")):
        llm = LLM(
            model=paths["base" if name == "plain" else "inra"],
            hf_overrides={"architectures": [architecture]} if architecture else None,
            dtype="float32", enforce_eager=True, max_model_len=PROMPT_TOKENS + NEW_TOKENS + 32, block_size=32,
            max_num_seqs=max(BATCHES), enable_prefix_caching=False, seed=0,
        )
        cache = llm.llm_engine.vllm_config.cache_config
        kv_tokens[name] = cache.num_gpu_blocks * cache.block_size
        # detokenize=False: the tokenizer is a 100-character one, smaller than the 32k vocabulary
        params = SamplingParams(
            temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False,
            extra_args={"realign_lambda": REALIGN_LAMBDA} if architecture else None,
        )
        seconds[name] = {}
        for batch in BATCHES:
            batch_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts(batch, 100)]
            llm.generate(batch_prompts[:1], params, use_tqdm=False)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                outputs = llm.generate(batch_prompts, params, use_tqdm=False)
                times.append(time.perf_counter() - start)
                assert all(len(o.outputs[0].token_ids) == NEW_TOKENS for o in outputs)
            seconds[name][str(batch)] = statistics.median(times)
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    with open(out_json, "w") as f:
        json.dump({"seconds": seconds, "kv_tokens": kv_tokens}, f)


if __name__ == "__main__":
    main()
