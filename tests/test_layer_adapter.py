import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Qwen2Config,
)

from trl_realign.modeling import (
    adapter_parameter_names,
    add_layer_adapter,
    bypass_layer_adapter,
    expand_model,
    freeze_all_but_adapter,
    get_layer_adapter_config,
    mark_layer_adapter,
    num_layer_adapters,
)
from trl_realign.testing import tiny_causal_lm


def inputs(vocab=103, batch=2, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding in the second row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


def perturb_adapter(model, n=None, seed=1):
    """Make the adapter layers non-identity, as training would."""
    generator = torch.Generator().manual_seed(seed)
    n = n or num_layer_adapters(model.config)
    with torch.no_grad():
        for layer in model.model.layers[:n]:
            for param in layer.parameters():
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("tie,num_adapters", [(False, 1), (True, 2)])
def test_identity_expansion_keeps_logits(family, tie, num_adapters):
    base = tiny_causal_lm(family, vocab_size=103, tie_word_embeddings=tie)
    batch = inputs()
    expected = logits(base, batch)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    model = add_layer_adapter(base, num_adapters=num_adapters)

    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=1e-6)
    assert model.config.num_hidden_layers == 2 + num_adapters == len(model.model.layers)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(2 + num_adapters))
    assert get_layer_adapter_config(model.config) == {
        "num_adapters": num_adapters,
        "init": "identity",
        "base_model_name_or_path": "",
        "base_num_hidden_layers": 2,
    }
    # Original layers moved up by n and untouched; the adapter copies layer 0 except for the zeroed residual writers
    state = model.state_dict()
    for name, value in base_state.items():
        new_name = name
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            new_name = name.replace(f"model.layers.{index}.", f"model.layers.{index + num_adapters}.", 1)
        assert torch.equal(state[new_name], value), new_name
    for i in range(num_adapters):
        for name, value in base_state.items():
            if not name.startswith("model.layers.0."):
                continue
            copied = state[name.replace("model.layers.0.", f"model.layers.{i}.", 1)]
            if ".o_proj." in name or ".down_proj." in name:
                assert not copied.any(), name
            else:
                assert torch.equal(copied, value), name
    if tie:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    # Only the adapter layers train
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    prefixes = tuple(f"model.layers.{i}." for i in range(num_adapters))
    expected_trainable = {name for name, _ in model.named_parameters() if name.startswith(prefixes)}
    assert trainable == expected_trainable == set(adapter_parameter_names(model))


def test_qwen2_sliding_window_layers_stay_consistent():
    overrides = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, num_hidden_layers=3)
    base = tiny_causal_lm("qwen2", vocab_size=103, **overrides)
    assert base.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    batch = inputs(length=16)  # longer than the window, so a wrong layer type changes the logits
    expected = logits(base, batch)

    model = add_layer_adapter(base, num_adapters=2)

    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=1e-6)
    # The expanded config is what Qwen2Config derives itself for 5 layers with the window starting 2 layers later
    fresh = Qwen2Config(
        num_hidden_layers=5, max_window_layers=3, use_sliding_window=True, sliding_window=4
    )
    assert model.config.layer_types == fresh.layer_types
    assert model.config.max_window_layers == 3
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, None, None, 4, 4]


def test_mistral_sliding_window_identity():
    base = tiny_causal_lm("mistral", vocab_size=103, sliding_window=4)
    batch = inputs(length=16)
    expected = logits(base, batch)
    torch.testing.assert_close(logits(add_layer_adapter(base), batch), expected, rtol=0, atol=1e-6)


def greedy(model, batch, use_cache, tokens=8):
    with torch.no_grad():
        return model.generate(
            **batch, max_new_tokens=tokens, do_sample=False, use_cache=use_cache, pad_token_id=0, eos_token_id=None
        )


@pytest.mark.parametrize("family,num_adapters", [("qwen2", 1), ("llama", 2)])
def test_cached_generation_matches_uncached_after_adapter_changes(family, num_adapters):
    model = add_layer_adapter(tiny_causal_lm(family, vocab_size=103), num_adapters=num_adapters)
    perturb_adapter(model)
    batch = inputs(batch=2, length=6)
    cached = greedy(model, batch, use_cache=True)
    assert torch.equal(cached, greedy(model, batch, use_cache=False))
    # The same check catches a cache-slot clash: with the adapter sharing layer 0's slot, cached decoding breaks
    model.model.layers[0].self_attn.layer_idx = num_adapters
    try:
        clashed = greedy(model, batch, use_cache=True)
    except RuntimeError:  # the shared slot holds twice the keys: shapes no longer match
        clashed = None
    assert clashed is None or not torch.equal(clashed, cached)


def test_bypass_is_the_base_model_with_cache_and_restores_everything():
    base = tiny_causal_lm("qwen2", vocab_size=103, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    original = copy.deepcopy(base)
    batch = inputs(length=8)
    model = add_layer_adapter(base, num_adapters=2)
    perturb_adapter(model)
    assert not torch.allclose(logits(model, batch), logits(original, batch))
    config_before = model.config.to_dict()
    layers_before = list(model.model.layers)

    with bypass_layer_adapter(model):
        torch.testing.assert_close(logits(model, batch), logits(original, batch), rtol=0, atol=1e-6)
        assert torch.equal(greedy(model, batch, use_cache=True), greedy(original, batch, use_cache=True))
        with pytest.raises(RuntimeError, match="nested"):
            with bypass_layer_adapter(model):
                pass

    assert model.config.to_dict() == config_before
    assert list(model.model.layers) == layers_before
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(4))
    # Restored even when the block raises
    with pytest.raises(KeyError):
        with bypass_layer_adapter(model):
            raise KeyError("boom")
    assert model.config.to_dict() == config_before and len(model.model.layers) == 4


def test_kaiming_init_is_not_identity():
    base = tiny_causal_lm("llama", vocab_size=103)
    batch = inputs()
    expected = logits(base, batch)
    source = {k: v.clone() for k, v in base.model.layers[0].state_dict().items()}
    model = add_layer_adapter(base, init="kaiming")
    assert model.config.layer_adapter["init"] == "kaiming"
    assert (logits(model, batch) - expected).abs().max() > 1e-2
    adapter = model.model.layers[0].state_dict()
    assert all(not torch.equal(adapter[k], v) for k, v in source.items())
    assert all(torch.equal(model.model.layers[1].state_dict()[k], v) for k, v in source.items())


@pytest.mark.parametrize(
    "model",
    [
        GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=103)),
        GemmaForCausalLM(GemmaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=8, vocab_size=103)),
    ],
    ids=["gpt2", "gemma"],
)
def test_unsupported_family_is_refused(model):
    with pytest.raises(ValueError, match="llama, mistral, qwen2, qwen3"):
        add_layer_adapter(model)


def test_bad_arguments_are_refused():
    model = tiny_causal_lm("llama", vocab_size=103)
    with pytest.raises(ValueError, match="init"):
        add_layer_adapter(model, init="zeros")
    with pytest.raises(ValueError, match="num_adapters"):
        add_layer_adapter(model, num_adapters=0)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2  # refused before any change
    add_layer_adapter(model)
    with pytest.raises(ValueError, match="already has 1 adapter"):
        add_layer_adapter(model)
    with pytest.raises(ValueError, match="no layer adapter"):
        with bypass_layer_adapter(tiny_causal_lm("llama", vocab_size=103)):
            pass


def test_expand_model_writes_a_plain_checkpoint(tmp_path, tokenizer):
    base = tiny_causal_lm("qwen2", vocab_size=len(tokenizer), tie_word_embeddings=True)
    base_dir = str(tmp_path / "base")
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    batch = inputs(vocab=len(tokenizer))
    expected = logits(base, batch)

    out = expand_model(base_dir, str(tmp_path / "expanded"), num_adapters=2)

    loaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no trl_realign involved
    assert loaded.config.num_hidden_layers == 4 == len(loaded.model.layers)
    assert loaded.config.layer_adapter == {
        "num_adapters": 2,
        "init": "identity",
        "base_model_name_or_path": base_dir,
        "base_num_hidden_layers": 2,
    }
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    with bypass_layer_adapter(loaded):
        torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)

    # An in-memory model is copied, not modified
    expand_model(base, str(tmp_path / "from_memory"), tokenizer=tokenizer)
    assert base.config.num_hidden_layers == 2 and num_layer_adapters(base.config) == 0
    assert num_layer_adapters(AutoModelForCausalLM.from_pretrained(str(tmp_path / "from_memory")).config) == 1


def test_mark_layer_adapter_on_a_plain_expanded_checkpoint():
    model = tiny_causal_lm("llama", vocab_size=103, num_hidden_layers=3)  # stands for a released L+1 model
    assert num_layer_adapters(model.config) == 0 and get_layer_adapter_config(model.config) is None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mark_layer_adapter(model.config, 1, base_model_name_or_path="org/base")
    assert get_layer_adapter_config(model.config) == {
        "num_adapters": 1,
        "init": "identity",
        "base_model_name_or_path": "org/base",
        "base_num_hidden_layers": 2,
    }
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    freeze_all_but_adapter(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")
    }
    with pytest.raises(ValueError, match="cannot be 3 adapter"):
        mark_layer_adapter(model.config, 3)
    with pytest.raises(ValueError, match="Malformed"):
        get_layer_adapter_config({"layer_adapter": {"num_adapters": "1"}})


def test_expand_command_kaiming_init_follows_its_seed(tmp_path, tokenizer, capsys):
    from safetensors.torch import load_file

    from trl_realign.cli.main import main

    base_dir = tmp_path / "base"
    tiny_causal_lm("qwen2", vocab_size=len(tokenizer)).save_pretrained(base_dir)

    def expand(name, *seed):
        torch.manual_seed(len(name))  # what ran before must not decide the init: only `--seed` does
        main(["expand", "--model_name_or_path", str(base_dir), "--output_dir", str(tmp_path / name), "--init",
              "kaiming", *seed])  # fmt: skip
        return {k: v for k, v in load_file(tmp_path / name / "model.safetensors").items() if ".layers.0." in k}

    first, again, other = expand("a", "--seed", "3"), expand("bb", "--seed", "3"), expand("ccc", "--seed", "4")
    assert first.keys() == again.keys() and all(torch.equal(again[k], v) for k, v in first.items())
    assert any(not torch.equal(other[k], v) for k, v in first.items())
    default, default_again = expand("dddd"), expand("eeeee")
    assert all(torch.equal(default_again[k], v) for k, v in default.items())
    assert "Expanded checkpoint written to" in capsys.readouterr().out
