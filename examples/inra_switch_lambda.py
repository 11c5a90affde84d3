"""Change the realignment strength λ between dialogue turns (paper Appendix F.3), offline on CPU in seconds.

The paper lowers λ in the second turn of MT-Bench so that the model follows the new instruction instead of paying the
alignment tax. With InRa that costs nothing: one model holds both paths, and a cache created with `paths="both"` keeps
both paths' keys and values, so the second turn continues from the first turn's cache with a different λ.

The models here are tiny and random (the adapter is perturbed to stand in for training), so the text is noise; with a
real expanded checkpoint use `InRaForCausalLM.from_pretrained(path)` (or `num_adapters=1` for the paper's released
L+1 models) and its tokenizer.

    python examples/inra_switch_lambda.py
"""

import copy

import torch

from trl_realign.data import build_char_tokenizer
from trl_realign.modeling.adapter import add_layer_adapter
from trl_realign.modeling.inra import InRaForCausalLM
from trl_realign.modeling.inra_cache import InRaCache
from trl_realign.testing import tiny_causal_lm


torch.set_num_threads(1)  # tiny models: threads only add synchronisation (and stall on a busy machine)
tokenizer = build_char_tokenizer()
base = tiny_causal_lm("qwen2", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4)
expanded = add_layer_adapter(copy.deepcopy(base))
with torch.no_grad():  # stands in for adapter training (LayerAdapterSFTTrainer / LayerAdapterDPOTrainer)
    for param in expanded.model.layers[0].parameters():
        param.add_(0.3 * torch.randn_like(param))
model = InRaForCausalLM.from_model(expanded).eval()

turns = ["Tell me about the sea.", "Now answer in one word: what colour is it?"]
generation = dict(max_new_tokens=16, do_sample=False)


def chat(lambdas, reuse_cache=True):
    """Run the dialogue with λ = lambdas[i] in turn i; returns the replies and the final token ids."""
    cache = InRaCache(model.config, paths="both") if reuse_cache else None
    ids = torch.empty(1, 0, dtype=torch.long)
    replies = []
    for turn, lam in zip(turns, lambdas):
        user = tokenizer.apply_chat_template(
            [{"role": "user", "content": turn}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        prompt = torch.cat([ids, user], dim=1)
        with torch.no_grad():
            ids = model.generate(prompt, realign_lambda=lam, past_key_values=cache, **generation)
        replies.append(tokenizer.decode(ids[0, prompt.shape[1] :], skip_special_tokens=True))
    return replies, ids


for lambdas in [(1.0, 1.0), (1.0, 0.25), (1.0, 0.0)]:
    replies, ids = chat(lambdas)
    # Reusing the dual cache across turns gives exactly what re-encoding the whole conversation gives
    assert torch.equal(ids, chat(lambdas, reuse_cache=False)[1])
    print(f"λ per turn {lambdas}:")
    for turn, reply in zip(turns, replies):
        print(f"  user: {turn}\n  assistant: {reply!r}")
