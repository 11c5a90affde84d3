"""
Build the plugin tests' tiny checkpoints and their reference tokens, with the MAIN environment (trl-realign, its
transformers): `python vllm_plugin/scripts/make_reference.py OUT_DIR`.

The vLLM venv cannot import trl-realign (vLLM pins an older transformers), so the reference crosses over as files:
per family a base checkpoint, its InRa expansion (a perturbed adapter, so that the paths differ), and the greedy tokens
of `InRaForCausalLM.generate` for every (prompt, λ), in `OUT_DIR/reference.json`. The plugin tests compare vLLM's
tokens with these exactly.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil

import torch
import transformers

from trl_realign.data.tokenizer import build_char_tokenizer
from trl_realign.modeling.adapter import MARKER, add_layer_adapter
from trl_realign.modeling.inra import InRaForCausalLM
from trl_realign.testing import tiny_causal_lm


LAMBDAS = (-0.5, 0.0, 0.25, 0.5, 1.0, 1.5)
NEW_TOKENS = 24
# family -> (config overrides, adapter layers). Mistral's window (8) is shorter than the prompts, so the sliding
# window is exercised; Llama has two adapter layers.
FAMILIES = {
    "llama": (dict(), 2),
    "qwen2": (dict(), 1),
    "qwen3": (dict(), 1),
    "mistral": (dict(sliding_window=8), 1),
}
VERSION = 1  # bump when anything above changes, so that a stale reference folder is rebuilt


def prompts(vocab_size: int) -> list[list[int]]:
    # Five prompts of 21-53 tokens; four share a 32-token prefix (one full block: the CPU backend needs blocks of 32)
    # for prefix caching, and the
    # long ones exceed the tests' 32-token prefill chunks.
    generator = torch.Generator().manual_seed(7)
    ids = lambda n: torch.randint(7, vocab_size, (n,), generator=generator).tolist()  # noqa: E731 (above specials)
    prefix = ids(32)
    return [prefix + ids(5), prefix + ids(21), ids(21), prefix + ids(1), prefix + ids(13)]


def spread_weights(model) -> None:
    # HF's init (std 0.02) gives near-uniform logits, whose greedy argmax float rounding could flip between two
    # engines; unit-variance activations give clear winners and varied continuations.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                std = 1.0 if "embed_tokens" in name else param.shape[1] ** -0.5
                param.copy_(std * torch.randn(param.shape, generator=generator))


def perturbed_expansion(base, num_adapters: int):
    # The identity init would make both paths equal; noise on the adapter stands in for training
    expanded = add_layer_adapter(copy.deepcopy(base), num_adapters=num_adapters)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in expanded.model.layers[:num_adapters].parameters():
            param.add_(torch.randn(param.shape, generator=noise), alpha=0.3)
    return expanded


def greedy(model, prompt: list[int], **kwargs) -> list[int]:
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False, **kwargs,
        )
    return out[0, len(prompt):].tolist()


def build_family(out_dir: str, family: str, overrides: dict, num_adapters: int, tokenizer) -> dict:
    base = tiny_causal_lm(family, vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, **overrides)
    spread_weights(base)
    base.generation_config.eos_token_id = None
    expanded = perturbed_expansion(base, num_adapters)
    inra = InRaForCausalLM.from_model(expanded)
    shutil.rmtree(os.path.join(out_dir, family), ignore_errors=True)  # a stale build of an older version
    paths = {name: os.path.join(out_dir, family, name) for name in ("base", "inra", "plain")}
    base.save_pretrained(paths["base"])
    inra.save_pretrained(paths["inra"], save_adapter=False)
    # The same weights without the marker: what a released L+n checkpoint looks like (num_adapters given at launch)
    shutil.copytree(paths["inra"], paths["plain"])
    with open(os.path.join(paths["plain"], "config.json")) as f:
        config = json.load(f)
    del config[MARKER]
    with open(os.path.join(paths["plain"], "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for path in paths.values():
        tokenizer.save_pretrained(path)
    family_prompts = prompts(len(tokenizer))
    return {
        "paths": paths,
        "num_adapters": num_adapters,
        "architecture": type(base).__name__,
        "prompts": family_prompts,
        # tokens[str(λ)][i]: the greedy continuation of prompts[i] at λ
        "tokens": {str(lam): [greedy(inra, p, realign_lambda=lam) for p in family_prompts] for lam in LAMBDAS},
        "base_tokens": [greedy(base, p) for p in family_prompts],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out_dir)
    reference_file = os.path.join(out_dir, "reference.json")
    stamp = hashlib.sha256(open(__file__, "rb").read()).hexdigest()
    if os.path.isfile(reference_file):
        with open(reference_file) as f:
            if json.load(f).get("stamp") == stamp:
                print(reference_file)
                return
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    tokenizer = build_char_tokenizer()
    reference = {"stamp": stamp, "version": VERSION, "lambdas": list(LAMBDAS), "new_tokens": NEW_TOKENS,
                 "families": {}}
    for family, (overrides, num_adapters) in FAMILIES.items():
        reference["families"][family] = build_family(out_dir, family, overrides, num_adapters, tokenizer)
    os.makedirs(out_dir, exist_ok=True)
    with open(reference_file, "w") as f:
        json.dump(reference, f, indent=1)
    print(reference_file)


if __name__ == "__main__":
    main()
