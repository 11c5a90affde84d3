import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

from trl_realign.modeling.adapter import add_layer_adapter
from trl_realign.modeling.inra import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, InRaForCausalLM
from trl_realign.modeling.inra_cache import InRaCache
from trl_realign.testing import tiny_causal_lm


VOCAB = 103
# Qwen2 with sliding-window layers (window 4, shorter than the prompts): layers >= max_window_layers slide
QWEN2_SLIDING = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)
FAMILIES = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama-eager": ("llama", dict(attn_implementation="eager")),
    "qwen2-sliding": ("qwen2", QWEN2_SLIDING),
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3": ("qwen3", {}),
    "mistral-sliding": ("mistral", dict(sliding_window=4)),
}


def build(family="llama", num_adapters=1, num_hidden_layers=3, **config):
    """Base model, expanded model with a perturbed (trained-like) adapter, and the InRa model wrapping the latter."""
    base = tiny_causal_lm(family, vocab_size=VOCAB, num_hidden_layers=num_hidden_layers, **config)
    base.generation_config.eos_token_id = None  # fixed-length generations, compared token by token
    expanded = add_layer_adapter(copy.deepcopy(base), num_adapters=num_adapters)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in expanded.model.layers[:num_adapters]:
            for param in layer.parameters():
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return base, expanded, InRaForCausalLM.from_model(expanded)


def left_padded(batch=3, length=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch):  # rows 1.. are left-padded by 2, 4, ...
        attention_mask[row, : 2 * row] = 0
        input_ids[row, : 2 * row] = 0
    return input_ids, attention_mask


def positions(attention_mask):
    # What generate uses for left-padded rows: count real tokens only
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def mixed(lam, z_b, z_a):
    lam = lam.view(-1, 1, 1) if isinstance(lam, torch.Tensor) else lam
    return lam * z_b + (1 - lam) * z_a


@torch.no_grad()
def reference_greedy(base, expanded, lam, input_ids, attention_mask, new_tokens):
    """Greedy decoding by full forwards of the two plain models, logits mixed by λ: no cache, no InRa code."""
    for _ in range(new_tokens):
        kwargs = dict(attention_mask=attention_mask, position_ids=positions(attention_mask), use_cache=False)
        logits = mixed(lam, expanded(input_ids, **kwargs).logits, base(input_ids, **kwargs).logits)
        next_token = logits[:, -1].argmax(-1, keepdim=True)
        input_ids = torch.cat([input_ids, next_token], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)
    return input_ids


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_are_the_lambda_mix_of_the_two_paths(name):
    family, config = FAMILIES[name]
    base, expanded, inra = build(family, **config)
    input_ids, attention_mask = left_padded()
    with torch.no_grad():
        z_a = base(input_ids, attention_mask=attention_mask).logits
        z_b = expanded(input_ids, attention_mask=attention_mask).logits
        assert (z_a - z_b).abs().max() > 1e-2  # the perturbed adapter makes the paths differ

        def inra_logits(lam):
            return inra(input_ids, attention_mask=attention_mask, realign_lambda=lam).logits

        torch.testing.assert_close(inra_logits(0.0), z_a, atol=1e-6, rtol=0)
        torch.testing.assert_close(inra_logits(1.0), z_b, atol=1e-6, rtol=0)
        for lam in (0.5, -0.5, 1.5, torch.tensor([0.0, 0.25, 1.0])):
            torch.testing.assert_close(inra_logits(lam), mixed(lam, z_b, z_a), atol=1e-5, rtol=1e-5)


def test_two_adapter_layers_and_the_default_lambda():
    base, expanded, inra = build("qwen2", num_adapters=2, **QWEN2_SLIDING)
    input_ids, attention_mask = left_padded()
    with torch.no_grad():
        z_a = base(input_ids, attention_mask=attention_mask).logits
        z_b = expanded(input_ids, attention_mask=attention_mask).logits
        torch.testing.assert_close(inra(input_ids, attention_mask=attention_mask).logits, z_b, atol=1e-6, rtol=0)
        inra.realign_lambda = 0.3
        torch.testing.assert_close(
            inra(input_ids, attention_mask=attention_mask).logits, mixed(0.3, z_b, z_a), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("name", ["llama", "llama-eager", "qwen2-sliding", "mistral-sliding"])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 1.5])
def test_cached_generation_equals_full_forwards_with_left_padding(name, lam):
    family, config = FAMILIES[name]
    base, expanded, inra = build(family, **config)
    input_ids, attention_mask = left_padded()
    expected = reference_greedy(base, expanded, lam, input_ids, attention_mask, new_tokens=8)
    with torch.no_grad():
        generated = inra.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False, realign_lambda=lam
        )
    assert torch.equal(generated, expected)


def test_per_row_lambda_batch_equals_each_row_alone():
    base, expanded, inra = build("qwen2", **QWEN2_SLIDING)
    input_ids, attention_mask = left_padded(batch=4)
    lams = torch.tensor([0.0, 0.5, 1.0, 1.5])
    with torch.no_grad():
        batched = inra.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False, realign_lambda=lams
        )
        for row, lam in enumerate(lams.tolist()):
            prompt = input_ids[row : row + 1, attention_mask[row].bool()]
            alone = inra.generate(prompt, max_new_tokens=8, do_sample=False, realign_lambda=lam)
            assert torch.equal(batched[row, -8:], alone[0, -8:]), f"row {row} (λ={lam})"
    assert len({tuple(row[-8:].tolist()) for row in batched}) > 1  # the λ values give different continuations


def test_beam_search_reorders_both_paths():
    base, expanded, inra = build("llama")
    input_ids, attention_mask = left_padded(batch=2)
    beam = dict(attention_mask=attention_mask, max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        # Single paths: exactly the plain models' beam search
        assert torch.equal(inra.generate(input_ids, realign_lambda=0.0, **beam), base.generate(input_ids, **beam))
        assert torch.equal(inra.generate(input_ids, realign_lambda=1.0, **beam), expanded.generate(input_ids, **beam))
        # Both paths: the cache reordered by beam search gives what recomputing everything without a cache gives. The
        # scores are compared too: a path's cache rows picked from the wrong path shift them without flipping tokens.
        lams = torch.tensor([0.3, 1.5])
        scored = dict(return_dict_in_generate=True, output_scores=True)
        cached = inra.generate(input_ids, realign_lambda=lams, **beam, **scored)
        uncached = inra.generate(input_ids, realign_lambda=lams, use_cache=False, **beam, **scored)
    assert cached.sequences.shape == (4, input_ids.shape[1] + 6)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-6, rtol=0)


def test_sampling_is_reproducible_and_lambda_zero_samples_the_base_model():
    base, expanded, inra = build("qwen2", **QWEN2_SLIDING)
    input_ids, attention_mask = left_padded(batch=2)
    sample = dict(attention_mask=attention_mask, max_new_tokens=8, do_sample=True, top_k=0, num_return_sequences=2)

    def draw(model, **kwargs):
        torch.manual_seed(123)
        with torch.no_grad():
            return model.generate(input_ids, **sample, **kwargs)

    first = draw(inra, realign_lambda=torch.tensor([0.5, 1.5]))
    assert torch.equal(first, draw(inra, realign_lambda=torch.tensor([0.5, 1.5])))
    assert first.shape == (4, input_ids.shape[1] + 8)
    assert torch.equal(draw(inra, realign_lambda=0.0), draw(base))


def cached_elements(cache):
    return sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers if layer.is_initialized)


def test_single_path_lambdas_fill_one_cache_and_paths_match_the_plain_models():
    base, expanded, inra = build("qwen2", **QWEN2_SLIDING)
    input_ids, attention_mask = left_padded(batch=2)
    run = dict(attention_mask=attention_mask, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    n = inra.num_adapters
    with torch.no_grad():
        base_cache = base.generate(input_ids, **run).past_key_values
        expanded_cache = expanded.generate(input_ids, **run).past_key_values
        caches = {lam: inra.generate(input_ids, realign_lambda=lam, **run).past_key_values for lam in (0.0, 1.0, 0.5)}
    assert isinstance(base_cache, DynamicCache)
    assert [caches[lam].paths for lam in (0.0, 1.0, 0.5)] == ["reference", "aligned", "both"]
    # λ=0 caches exactly what the base model caches, λ=1 what the expanded model caches, λ=0.5 both
    assert not caches[0.0].layers[0].is_initialized
    assert cached_elements(caches[0.0]) == cached_elements(base_cache)
    assert cached_elements(caches[1.0]) == cached_elements(expanded_cache)
    assert cached_elements(caches[0.5]) == cached_elements(base_cache) + cached_elements(expanded_cache)
    assert caches[0.0].path_key_values(n, "aligned") is None and caches[1.0].path_key_values(n, "reference") is None
    # One cache per path: in the dual cache, path A holds the base model's keys and path B the expanded model's (on
    # the prompt; the generated tokens differ between λ values). Sliding layers keep only the last window - 1 tokens,
    # generated ones, so only the full-attention layers are compared.
    prompt = slice(None, input_ids.shape[1])
    for index in range(len(expanded_cache.layers)):
        if expanded_cache.layers[index].is_sliding:
            continue
        aligned = caches[0.5].path_key_values(index, "aligned")
        torch.testing.assert_close(aligned[0][..., prompt, :], expanded_cache.layers[index].keys[..., prompt, :])
        torch.testing.assert_close(aligned[1][..., prompt, :], expanded_cache.layers[index].values[..., prompt, :])
        reference = caches[0.5].path_key_values(index, "reference")
        if index < n:
            assert reference is None
        else:
            torch.testing.assert_close(reference[0][..., prompt, :], base_cache.layers[index - n].keys[..., prompt, :])


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.5])
def test_forward_with_cache_continues_a_sequence(lam):
    base, expanded, inra = build("qwen2", **QWEN2_SLIDING)
    input_ids = torch.randint(4, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = inra(input_ids, realign_lambda=lam, use_cache=False).logits
        prefix = inra(input_ids[:, :6], realign_lambda=lam)
        assert prefix.past_key_values.get_seq_length() == 6
        # No position ids or mask: the positions continue from the cache, as in a plain model's forward
        steps = [prefix.logits]
        for position in range(6, 9):
            next_ids = input_ids[:, position : position + 1]
            steps.append(inra(next_ids, past_key_values=prefix.past_key_values, realign_lambda=lam).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("paths,lam", [("both", 0.5), ("aligned", 1.0), ("reference", 0.0)])
def test_cache_batch_operations_act_on_each_path(paths, lam):
    base, expanded, inra = build("llama")
    input_ids = torch.randint(4, VOCAB, (3, 5), generator=torch.Generator().manual_seed(6))

    def cache_of(ids):
        with torch.no_grad():
            return inra(ids, realign_lambda=lam, past_key_values=InRaCache(inra.config, paths)).past_key_values

    def assert_same(cache, expected):
        for layer, expected_layer in zip(cache.layers, expected.layers):
            assert layer.is_initialized == expected_layer.is_initialized
            if layer.is_initialized:
                torch.testing.assert_close(layer.keys, expected_layer.keys)
                torch.testing.assert_close(layer.values, expected_layer.values)

    cache = cache_of(input_ids)
    cache.batch_repeat_interleave(2)
    assert_same(cache, cache_of(input_ids.repeat_interleave(2, dim=0)))
    cache.batch_select_indices(torch.tensor([5, 0]))
    assert_same(cache, cache_of(input_ids[[2, 0]]))
    cache.reorder_cache(torch.tensor([1, 1]))
    assert_same(cache, cache_of(input_ids[[0, 0]]))


def test_lambda_changes_between_turns_with_a_reused_dual_cache():
    base, expanded, inra = build("qwen2", **QWEN2_SLIDING)
    prompt = torch.randint(4, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    user_turn = torch.randint(4, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = InRaCache(inra.config, paths="both")
        first = inra.generate(prompt, max_new_tokens=5, do_sample=False, realign_lambda=1.0, past_key_values=cache)
        conversation = torch.cat([first, user_turn], dim=1)
        second = inra.generate(
            conversation, max_new_tokens=5, do_sample=False, realign_lambda=0.25, past_key_values=cache
        )
    assert torch.equal(first, reference_greedy(base, expanded, 1.0, prompt, torch.ones_like(prompt), 5))
    expected = reference_greedy(base, expanded, 0.25, conversation, torch.ones_like(conversation), 5)
    assert torch.equal(second, expected)


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_reload_are_exact(tmp_path, tie):
    base, expanded, inra = build("qwen2", tie_word_embeddings=tie, **QWEN2_SLIDING)
    input_ids, attention_mask = left_padded()
    lams = torch.tensor([0.0, 0.5, 1.5])

    def run(model, **kwargs):
        with torch.no_grad():
            return model(input_ids, attention_mask=attention_mask, **kwargs).logits

    expected = run(inra, realign_lambda=lams)
    inra.save_pretrained(tmp_path)

    reloaded = InRaForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(run(reloaded, realign_lambda=lams), expected)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tie
    # The full form is a plain checkpoint of the expanded model
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(plain) is type(expanded)
    assert torch.equal(run(plain), run(expanded))

    # The adapter-only artifact holds the adapter layer and nothing else, and rebuilds the model on the base exactly
    adapter_dir = tmp_path / "layer_adapter"
    weights = load_file(adapter_dir / ADAPTER_WEIGHTS_NAME)
    assert set(weights) == {name for name in expanded.state_dict() if name.startswith("model.layers.0.")}
    adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text())
    assert adapter_config["num_adapters"] == 1 and adapter_config["base_num_hidden_layers"] == 3
    fresh_base = copy.deepcopy(base)
    rebuilt = InRaForCausalLM.from_base_and_adapter(fresh_base, adapter_dir)
    assert torch.equal(run(rebuilt, realign_lambda=lams), expected)

    # A base saved on disk and named in the artifact is found without passing it
    base.save_pretrained(tmp_path / "base")
    adapter_config["base_model_name_or_path"] = str(tmp_path / "base")
    (adapter_dir / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config))
    assert torch.equal(run(InRaForCausalLM.from_base_and_adapter(None, adapter_dir), realign_lambda=lams), expected)

    # An artifact whose tensors do not fit is refused before the caller's model is touched
    from safetensors.torch import save_file

    bad_dir = tmp_path / "bad_adapter"
    bad_dir.mkdir()
    (bad_dir / ADAPTER_CONFIG_NAME).write_text((adapter_dir / ADAPTER_CONFIG_NAME).read_text())
    save_file({k: v[..., :-1].contiguous() if k.endswith("o_proj.weight") else v for k, v in weights.items()},
              str(bad_dir / ADAPTER_WEIGHTS_NAME))
    untouched = copy.deepcopy(base)
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(ValueError, match="do not fit"):
        InRaForCausalLM.from_base_and_adapter(untouched, bad_dir)
    assert untouched.config.num_hidden_layers == 3 and getattr(untouched.config, "layer_adapter", None) is None
    assert before.keys() == untouched.state_dict().keys()
    assert all(torch.equal(v, before[k]) for k, v in untouched.state_dict().items())


def test_plain_checkpoint_needs_num_adapters(tmp_path):
    base, expanded, inra = build("llama")
    del expanded.config.layer_adapter  # like the paper's released L+1 checkpoints: no marker
    expanded.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_adapters"):
        InRaForCausalLM.from_pretrained(tmp_path)
    loaded = InRaForCausalLM.from_pretrained(tmp_path, num_adapters=1, realign_lambda=0.5)
    input_ids, attention_mask = left_padded()
    with torch.no_grad():
        z_a = base(input_ids, attention_mask=attention_mask).logits
        z_b = expanded(input_ids, attention_mask=attention_mask).logits
        torch.testing.assert_close(
            loaded(input_ids, attention_mask=attention_mask).logits, mixed(0.5, z_b, z_a), atol=1e-5, rtol=1e-5
        )
    expanded.config.layer_adapter = {"num_adapters": 1, "init": "identity", "base_model_name_or_path": "",
                                     "base_num_hidden_layers": 3}
    expanded.save_pretrained(tmp_path / "marked")
    with pytest.raises(ValueError, match="marked with 1 adapter"):
        InRaForCausalLM.from_pretrained(tmp_path / "marked", num_adapters=2)
    # The unexpanded base named as an L+1 model: a layer has no weights, which must not load as random
    base.save_pretrained(tmp_path / "base")
    config_file = tmp_path / "base" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_hidden_layers"] += 1
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lacks weights"):
        InRaForCausalLM.from_pretrained(tmp_path / "base", num_adapters=1)


def test_bad_input_is_refused():
    base, expanded, inra = build("llama")
    input_ids, attention_mask = left_padded()
    for bad in (float("nan"), float("inf"), torch.tensor([0.5, float("nan"), 0.5])):
        with pytest.raises(ValueError, match="finite"):
            inra(input_ids, realign_lambda=bad)
        with pytest.raises(ValueError, match="finite"):
            inra.generate(input_ids, max_new_tokens=2, realign_lambda=bad)
    with pytest.raises(ValueError, match="2 values but the batch has 3 rows"):
        inra(input_ids, realign_lambda=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="2 values but the batch has 3 rows"):
        inra.generate(input_ids, max_new_tokens=2, realign_lambda=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="1-D tensor"):
        inra(input_ids, realign_lambda=torch.ones(3, 1))
    with pytest.raises(TypeError, match="number or a tensor"):
        inra(input_ids, realign_lambda="0.5")
    with pytest.raises(TypeError, match="InRaCache"):
        inra(input_ids, past_key_values=DynamicCache(), realign_lambda=0.5)
    with pytest.raises(ValueError, match="holds only the 'reference' path"):
        inra(input_ids, past_key_values=InRaCache(inra.config, paths="reference"), realign_lambda=0.5)
    with pytest.raises(ValueError, match="no `layer_adapter` marker"):
        InRaForCausalLM.from_model(base)
    with pytest.raises(ValueError, match="not supported|does not support"):
        inra.generate(input_ids, max_new_tokens=2, cache_implementation="static")
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_NAME):
        InRaForCausalLM.from_base_and_adapter(base, os.path.dirname(__file__))


def test_adapter_artifact_is_typed_versioned_and_loads_from_the_hub_route(tmp_path, monkeypatch):
    from trl_realign.modeling import adapter_artifact
    from trl_realign.modeling.adapter_artifact import FORMAT_VERSION, LayerAdapterArtifact

    base, expanded, inra = build("llama", num_adapters=2)
    input_ids, attention_mask = left_padded()
    with torch.no_grad():
        expected = inra(input_ids, attention_mask=attention_mask, realign_lambda=0.5).logits
    inra.save_adapter(tmp_path / "adapter")
    written = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert written["format_version"] == FORMAT_VERSION == 1

    artifact = LayerAdapterArtifact.load(tmp_path / "adapter")
    assert isinstance(artifact, LayerAdapterArtifact)
    assert (artifact.num_adapters, artifact.base_num_hidden_layers, artifact.model_type) == (2, 3, "llama")
    assert (artifact.hidden_size, artifact.vocab_size, artifact.format_version) == (base.config.hidden_size, VOCAB, 1)
    state = expanded.state_dict()
    assert set(artifact.weights) == {k for k in state if k.startswith(("model.layers.0.", "model.layers.1."))}
    assert all(torch.equal(v, state[k]) for k, v in artifact.weights.items())
    assert LayerAdapterArtifact.from_model(expanded) == artifact  # the same fields (weights compared above)

    # A name that is not a local folder is a hub id: downloaded with huggingface_hub, then read the same way
    calls = []
    inra.save_pretrained(tmp_path / "full")  # the artifact in its `layer_adapter/` subfolder
    repos = {"someone/tiny-adapter": tmp_path / "adapter", "someone/tiny-inra": tmp_path / "full"}

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(repos[repo_id])

    monkeypatch.setattr(adapter_artifact, "snapshot_download", fake_snapshot_download)
    rebuilt = InRaForCausalLM.from_base_and_adapter(copy.deepcopy(base), "someone/tiny-adapter", realign_lambda=0.5)
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids, attention_mask=attention_mask).logits, expected)
    assert [repo_id for repo_id, _ in calls] == ["someone/tiny-adapter"]
    assert set(calls[0][1]["allow_patterns"]) == {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME}
    assert LayerAdapterArtifact.load("someone/tiny-inra", revision="v1", subfolder="layer_adapter") == artifact
    assert calls[-1][1]["revision"] == "v1"
    assert set(calls[-1][1]["allow_patterns"]) == {f"layer_adapter/{ADAPTER_CONFIG_NAME}",
                                                    f"layer_adapter/{ADAPTER_WEIGHTS_NAME}"}
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        LayerAdapterArtifact.load(str(tmp_path / "no-such-folder"))
    assert len(calls) == 2  # a missing local path is not sent to the hub

    # Artifacts from before versioning hold version 1's fields; unknown versions and fields are refused
    legacy = dict(written)
    del legacy["format_version"]
    (tmp_path / "adapter" / ADAPTER_CONFIG_NAME).write_text(json.dumps(legacy))
    assert LayerAdapterArtifact.load(tmp_path / "adapter").format_version == 1
    (tmp_path / "adapter" / ADAPTER_CONFIG_NAME).write_text(json.dumps({**written, "format_version": 2}))
    with pytest.raises(ValueError, match="format_version 2.*reads version 1"):
        LayerAdapterArtifact.load(tmp_path / "adapter")
    (tmp_path / "adapter" / ADAPTER_CONFIG_NAME).write_text(json.dumps({**written, "rank": 4}))
    with pytest.raises(ValueError, match="unknown field.*rank"):
        InRaForCausalLM.from_base_and_adapter(copy.deepcopy(base), tmp_path / "adapter")
