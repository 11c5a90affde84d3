"""CPU greedy decoding speed of InRa vs the plain model vs DeRa-style decoding with two separate models.

Variants (same model sizes, fp32, no padding):
- plain: the original L-layer model with its DynamicCache.
- inra (λ=0.5): the expanded model with both paths stacked as 2B rows through the original layers, one head.
- inra λ=0 / λ=1: a single path, one cache (λ=0 runs exactly the plain model's layers; λ=1 the expanded model's).
- expanded: the plain forward of the L+1-layer expanded model (what λ=1 should cost).
- two_model: the original model and a separately fine-tuned copy (DeRa's setting: two full models), two caches,
  logits mixed by λ at every step.
All variants run in the same hand-written greedy loop (prefill, then one token per forward with the cache, logits of
the last position only), so only the per-step model cost differs. The variants decode in lockstep, one step each in
rotating order, each step timed: on a shared CPU, load changes then hit all variants alike. The median of repeats is
reported. Targets (each batch size): inra_vs_plain ≥ 0.6, inra_vs_two_model ≥ 1.3, single_path_vs_plain ≥ 0.95.
`--shape qwen2.5-0.5b` builds the models at Qwen2.5-0.5B's dimensions (`_shapes.py`) instead of the small default;
`--variants` times a subset (the equivalence checks always run). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time


# Set before torch starts OpenMP. With the default (spinning) wait policy, on a shared CPU every multi-threaded op
# waits for a descheduled partner thread: small multi-row matmuls then ran ~100x slower than single-row ones (which
# do not go parallel), which measured the scheduler rather than the models. Passive waiting affects all variants alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import transformers  # noqa: E402

from trl_realign.modeling.adapter import add_layer_adapter  # noqa: E402
from trl_realign.modeling.inra import InRaForCausalLM  # noqa: E402
from trl_realign.testing import tiny_causal_lm  # noqa: E402

from _shapes import SHAPES  # noqa: E402  (benchmarks/ is the script's folder)


TARGETS = {"inra_vs_plain": 0.6, "inra_vs_two_model": 1.3, "single_path_vs_plain": 0.95}
VARIANTS = ("plain", "inra", "inra_lambda0", "inra_lambda1", "expanded", "two_model")
# variant whose speed each ratio compares, over the variant it is compared with
RATIOS = {"inra_vs_plain": ("inra", "plain"), "inra_vs_two_model": ("inra", "two_model"),
          "single_path_vs_plain": ("inra_lambda0", "plain"), "lambda1_vs_expanded": ("inra_lambda1", "expanded")}


def perturb(module, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def plain_step(model):
    def step(ids, cache):
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    return step


def inra_step(model, lam):
    def step(ids, cache):
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1, realign_lambda=lam)
        return out.logits[:, -1], out.past_key_values

    return step


def two_model_step(reference, aligned, lam):
    # DeRa-style decoding: two full models, two caches, logits mixed at every step
    def step(ids, caches):
        cache_a, cache_b = caches if caches is not None else (None, None)
        out_a = reference(ids, past_key_values=cache_a, use_cache=True, logits_to_keep=1)
        out_b = aligned(ids, past_key_values=cache_b, use_cache=True, logits_to_keep=1)
        logits = lam * out_b.logits[:, -1] + (1 - lam) * out_a.logits[:, -1]
        return logits, (out_a.past_key_values, out_b.past_key_values)

    return step


@torch.no_grad()
def greedy(step, prompt, new_tokens):
    logits, cache = step(prompt, None)
    tokens = [logits.argmax(-1, keepdim=True)]
    for _ in range(new_tokens - 1):
        logits, cache = step(tokens[-1], cache)
        tokens.append(logits.argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)


@torch.no_grad()
def lockstep(variants, prompt, new_tokens):
    """
    Decode with every variant in lockstep (one step of each in turn, order rotated every step) and time each step:
    on a shared machine, load changes then hit all variants alike instead of whichever ran during a busy second.
    Returns tokens/s per variant (prefill included).
    """
    names = list(variants)
    elapsed = dict.fromkeys(names, 0.0)
    caches, last = {}, {}
    for step_index in range(new_tokens):
        for name in names[step_index % len(names) :] + names[: step_index % len(names)]:
            start = time.perf_counter()
            logits, caches[name] = variants[name](prompt if step_index == 0 else last[name], caches.get(name))
            last[name] = logits.argmax(-1, keepdim=True)
            elapsed[name] += time.perf_counter() - start
    return {name: prompt.shape[0] * new_tokens / seconds for name, seconds in elapsed.items()}


def measure(variants, prompt, new_tokens, repeats):
    """Median tokens/s per variant over `repeats` lockstep runs, after a short warm-up."""
    lockstep(variants, prompt, 4)
    runs = [lockstep(variants, prompt, new_tokens) for _ in range(repeats)]
    return {name: statistics.median(run[name] for run in runs) for name in variants}


def build_variants(family: str, config: dict, lam: float, device="cpu", dtype=torch.float32) -> dict:
    """Every variant's decode step, the models built on the CPU (seeded) and then moved to `device` in `dtype`."""
    base = tiny_causal_lm(family, seed=0, **config)
    expanded = add_layer_adapter(copy.deepcopy(base))
    perturb(expanded.model.layers[0], 0.02, seed=1)  # a trained adapter is not the identity
    aligned = copy.deepcopy(base)  # DeRa's aligned model: a full fine-tune of the same size
    perturb(aligned, 0.002, seed=2)
    base, expanded, aligned = (model.to(device, dtype) for model in (base, expanded, aligned))
    inra = InRaForCausalLM.from_model(expanded).eval()  # shares the expanded model's weights
    return {
        "plain": plain_step(base),
        "inra": inra_step(inra, lam),
        "inra_lambda0": inra_step(inra, 0.0),
        "inra_lambda1": inra_step(inra, 1.0),
        "expanded": plain_step(expanded),
        "two_model": two_model_step(base, aligned, lam),
    }


def same_greedy_tokens(variants: dict, vocab: int, prompt_len: int, device="cpu") -> dict:
    """Whether InRa at λ=0 decodes what the plain model decodes, and at λ=1 what the expanded model decodes."""
    prompt = torch.randint(4, vocab, (2, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    return {f"{single}_equals_{plain}": torch.equal(greedy(variants[single], prompt, 8), greedy(variants[plain], prompt, 8))
            for single, plain in (("inra_lambda0", "plain"), ("inra_lambda1", "expanded"))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2", choices=["qwen2", "llama"])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a named Qwen2 shape (overrides the sizes below)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lam", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        intermediate_size=int(2.75 * args.hidden),
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    if args.shape:
        args.family, config = "qwen2", SHAPES[args.shape]
        args.layers, args.hidden, args.vocab = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    variants = build_variants(args.family, config, args.lam)
    # The benchmark only means something if InRa decodes what the plain models decode
    assert all(same_greedy_tokens(variants, args.vocab, args.prompt_len).values())

    timed = {name: variants[name] for name in args.variants}
    result = {}
    for batch in args.batch_sizes:
        prompt = torch.randint(4, args.vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch))
        tok_s = measure(timed, prompt, args.new_tokens, args.repeats)
        names = {"inra_lambda0": "inra_single_path"}
        figures = {f"{names.get(name, name)}_tok_s": value for name, value in tok_s.items()}
        figures.update({ratio: tok_s[a] / tok_s[b] for ratio, (a, b) in RATIOS.items() if a in tok_s and b in tok_s})
        suffix = "" if batch == 1 else f"_batch{batch}"
        result.update({f"{key}{suffix}": round(value, 3) for key, value in figures.items()})
        print(f"batch {batch}: " + ", ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)

    # every batch size is held to the same targets
    met = {key: value >= TARGETS[key.split("_batch")[0]] for key, value in result.items()
           if key.split("_batch")[0] in TARGETS}
    result.update(
        targets=TARGETS,
        targets_met=met,
        all_targets_met=bool(met) and all(met.values()),
        setup=dict(
            shape=args.shape or "default",
            family=args.family,
            layers=args.layers,
            hidden=args.hidden,
            vocab=args.vocab,
            new_tokens=args.new_tokens,
            prompt_len=args.prompt_len,
            lam=args.lam,
            threads=args.threads,
            repeats=args.repeats,
            dtype="float32",
            torch=torch.__version__,
            transformers=transformers.__version__,
            cpu=platform.processor() or platform.machine(),
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
            load_average_1min=round(os.getloadavg()[0], 2),
        ),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
