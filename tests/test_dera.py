import pytest
import torch
from transformers import DynamicCache

from trl_realign.modeling.dera import DeRaCache, DeRaForCausalLM
from trl_realign.testing import tiny_causal_lm


PROMPTS = ["1+2=", "hello there, 12*3", "ab"]


@pytest.fixture(scope="module")
def batch(tokenizer):
    # Different lengths, so that the batch is left-padded
    return tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")


def row(tokenizer, i):
    return tokenizer([PROMPTS[i]], return_tensors="pt")


def generated(sequences, prompt_length):
    return sequences[:, prompt_length:]


def assert_same_generation(single, batched_row, padding=(0,)):
    """A row generated alone stops at its EOS; in the batch it is then padded until the other rows finish."""
    assert torch.equal(batched_row[: len(single)], single)
    assert torch.isin(batched_row[len(single) :], torch.tensor(padding)).all()


@pytest.fixture(scope="module")
def pair(tokenizer):
    aligned = tiny_causal_lm("qwen2", seed=1, vocab_size=len(tokenizer))
    ref = tiny_causal_lm("qwen2", seed=2, vocab_size=len(tokenizer))
    return aligned, ref


@pytest.mark.parametrize("realign_lambda", [0.0, 0.3, 1.0, 1.7])
def test_same_model_both_sides_equals_plain_greedy(tokenizer, batch, realign_lambda):
    model = tiny_causal_lm("llama", seed=3, vocab_size=len(tokenizer))
    dera = DeRaForCausalLM(model, model)
    plain = model.generate(**batch, max_new_tokens=8, do_sample=False)
    mixed = dera.generate(**batch, max_new_tokens=8, do_sample=False, realign_lambda=realign_lambda)
    assert torch.equal(plain, mixed)


def test_same_model_both_sides_equals_plain_sampling(tokenizer, batch):
    # λ=0.5 and λ=1 mix z with itself exactly in float32, so the same seed must draw the same tokens
    model = tiny_causal_lm("qwen2", seed=3, vocab_size=len(tokenizer))
    dera = DeRaForCausalLM(model, model)
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.95, top_k=0, num_return_sequences=3)
    torch.manual_seed(0)
    plain = model.generate(**batch, **kwargs)
    torch.manual_seed(0)
    mixed = dera.generate(**batch, **kwargs, realign_lambda=torch.tensor([0.5, 1.0, 0.5]))
    assert torch.equal(plain, mixed)
    with torch.no_grad():
        logits = model(**batch).logits
        assert torch.equal(dera(**batch, realign_lambda=0.5).logits, logits)


def test_forward_mixes_logits_per_row(pair, batch):
    aligned, ref = pair
    dera = DeRaForCausalLM(aligned, ref)
    lam = torch.tensor([-0.5, 0.25, 2.0])
    with torch.no_grad():
        expected = lam.view(-1, 1, 1) * aligned(**batch).logits + (1 - lam.view(-1, 1, 1)) * ref(**batch).logits
        mixed = dera(**batch, realign_lambda=lam).logits
        default = DeRaForCausalLM(aligned, ref, realign_lambda=0.25)(**batch).logits
        explicit = dera(**batch, realign_lambda=0.25).logits
    torch.testing.assert_close(mixed, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(mixed[0], mixed[2])  # the rows really got different λ
    assert torch.equal(default, explicit)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_batched_greedy_equals_each_row_alone(tokenizer, batch, family):
    aligned = tiny_causal_lm(family, seed=1, vocab_size=len(tokenizer))
    ref = tiny_causal_lm(family, seed=2, vocab_size=len(tokenizer))
    dera = DeRaForCausalLM(aligned, ref)
    lambdas = [-0.5, 0.4, 1.5]
    batched = dera.generate(**batch, max_new_tokens=8, do_sample=False, realign_lambda=lambdas)
    batched = generated(batched, batch["input_ids"].shape[1])
    for i, lam in enumerate(lambdas):
        alone = row(tokenizer, i)
        single = dera.generate(**alone, max_new_tokens=8, do_sample=False, realign_lambda=lam)
        assert_same_generation(generated(single, alone["input_ids"].shape[1])[0], batched[i])
    # and the mixture is not a no-op: the two ends of the sweep generate something else
    aligned_only = dera.generate(**batch, max_new_tokens=8, do_sample=False, realign_lambda=1.0)
    ref_only = dera.generate(**batch, max_new_tokens=8, do_sample=False, realign_lambda=0.0)
    assert not torch.equal(aligned_only, ref_only)


def test_batched_sampling_distribution_equals_each_row_alone(tokenizer, pair, batch):
    """Sampled rows differ with the batch's random draws, so compare every step's logits with the row alone."""
    dera = DeRaForCausalLM(*pair)
    lambdas = torch.tensor([-0.5, 0.4, 1.5])
    torch.manual_seed(0)
    out = dera.generate(
        **batch,
        max_new_tokens=8,
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
        num_return_sequences=2,
        realign_lambda=lambdas,
        return_dict_in_generate=True,
        output_logits=True,
    )
    prompt_length = batch["input_ids"].shape[1]
    step_logits = torch.stack(out.logits, dim=1)  # [rows, steps, vocab], before temperature / top-p
    for expanded_row in range(out.sequences.shape[0]):
        i = expanded_row // 2  # num_return_sequences expands each row in place
        alone = row(tokenizer, i)["input_ids"][0]
        new_tokens = out.sequences[expanded_row, prompt_length:]
        # an unpadded, uncached forward over the prompt and the sampled tokens, with a float λ
        full = torch.cat([alone, new_tokens])[None]
        with torch.no_grad():
            logits = dera(input_ids=full, use_cache=False, realign_lambda=lambdas[i].item()).logits[0]
        expected = logits[len(alone) - 1 : len(alone) - 1 + len(new_tokens)]
        finished = (new_tokens == tokenizer.eos_token_id).cumsum(0) - (new_tokens == tokenizer.eos_token_id).long()
        live = finished == 0  # after EOS, generate pads: only steps up to and including EOS are comparable
        torch.testing.assert_close(step_logits[expanded_row][live], expected[live], rtol=1e-5, atol=1e-5)


def test_beam_search_batched_equals_each_row_alone(tokenizer, pair, batch):
    dera = DeRaForCausalLM(*pair)
    lambdas = [0.2, 1.0, 1.8]
    batched = dera.generate(**batch, max_new_tokens=6, num_beams=3, do_sample=False, realign_lambda=lambdas)
    for i, lam in enumerate(lambdas):
        alone = row(tokenizer, i)
        single = dera.generate(**alone, max_new_tokens=6, num_beams=3, do_sample=False, realign_lambda=lam)
        length = alone["input_ids"].shape[1]
        # beam search pads finished hypotheses with EOS (3) as well
        assert_same_generation(single[0, length:], batched[i, batch["input_ids"].shape[1] :], padding=(0, 3))


def test_cached_equals_uncached_generation(pair, batch):
    dera = DeRaForCausalLM(*pair)
    kwargs = dict(max_new_tokens=8, do_sample=False, realign_lambda=[1.6, -0.3, 0.5])
    assert torch.equal(dera.generate(**batch, **kwargs), dera.generate(**batch, **kwargs, use_cache=False))


def test_continuing_from_the_returned_cache_with_a_new_lambda(tokenizer, pair, batch):
    """λ can change between dialogue turns: continuing from the cache equals starting afresh with the new λ."""
    dera = DeRaForCausalLM(*pair)
    first = dera.generate(
        **batch, max_new_tokens=4, do_sample=False, realign_lambda=0.3, return_dict_in_generate=True
    )
    assert isinstance(first.past_key_values, DeRaCache)
    sequences = first.sequences
    attention_mask = torch.cat([batch["attention_mask"], torch.ones(len(PROMPTS), 4, dtype=torch.long)], dim=1)
    continued = dera.generate(
        input_ids=sequences,
        attention_mask=attention_mask,
        past_key_values=first.past_key_values,
        max_new_tokens=4,
        do_sample=False,
        realign_lambda=1.4,
    )
    afresh = dera.generate(
        input_ids=sequences, attention_mask=attention_mask, max_new_tokens=4, do_sample=False, realign_lambda=1.4
    )
    assert torch.equal(continued, afresh)


def test_pair_cache_is_a_cache_whose_layer_views_are_the_aligned_models(pair, batch):
    """`generate()` reads generic `Cache` views (`is_sliding`, `is_linear`, ...): they describe the aligned model."""
    dera = DeRaForCausalLM(*pair)
    with torch.no_grad():
        cache = dera(**batch, use_cache=True).past_key_values
    assert isinstance(cache, DeRaCache)
    assert cache.layers is cache.aligned_cache.layers and len(cache.layers) == pair[0].config.num_hidden_layers
    assert cache.is_sliding == cache.aligned_cache.is_sliding
    assert cache.get_seq_length() == batch["input_ids"].shape[1] == cache.ref_cache.get_seq_length()


def test_models_given_as_paths(tmp_path, tokenizer, pair, batch):
    aligned, ref = pair
    aligned.save_pretrained(tmp_path / "aligned")
    ref.save_pretrained(tmp_path / "ref")
    from_paths = DeRaForCausalLM(str(tmp_path / "aligned"), str(tmp_path / "ref"), dtype=torch.float32)
    in_memory = DeRaForCausalLM(aligned, ref)
    with torch.no_grad():
        expected = in_memory(**batch, realign_lambda=0.6).logits
        assert torch.equal(from_paths(**batch, realign_lambda=0.6).logits, expected)


def test_different_vocab_padding_mixes_shared_rows(tokenizer, batch):
    aligned = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer) + 5)
    ref = tiny_causal_lm("llama", seed=2, vocab_size=len(tokenizer))
    dera = DeRaForCausalLM(aligned, ref)
    with torch.no_grad():
        mixed = dera(**batch, realign_lambda=0.5).logits
        expected = 0.5 * aligned(**batch).logits[..., : len(tokenizer)] + 0.5 * ref(**batch).logits
    assert mixed.shape[-1] == len(tokenizer)
    torch.testing.assert_close(mixed, expected, rtol=1e-6, atol=1e-6)


def test_bad_inputs_raise_clear_errors(pair, batch):
    dera = DeRaForCausalLM(*pair)
    with pytest.raises(ValueError, match="one value per input row"):
        dera.generate(**batch, max_new_tokens=2, realign_lambda=[0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        dera.generate(**batch, max_new_tokens=2, realign_lambda=float("nan"))
    with pytest.raises(TypeError, match="float"):
        dera(**batch, realign_lambda="0.5")
    with pytest.raises(ValueError, match="no loss"):
        dera(**batch, labels=batch["input_ids"])
    with pytest.raises(ValueError, match="input_ids"):
        dera(inputs_embeds=torch.zeros(1, 2, 32))
    foreign = DynamicCache(config=pair[0].config)
    with torch.no_grad():
        pair[0](**batch, past_key_values=foreign, use_cache=True)
    with pytest.raises(ValueError, match="DeRaCache"):
        dera(**batch, past_key_values=foreign)
    with pytest.raises(ValueError, match="language-modeling head"):
        DeRaForCausalLM(pair[0], pair[1].model)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        DeRaForCausalLM(pair[0], torch.nn.Linear(2, 2))


def test_dera_equals_inra_when_the_inra_paths_are_the_two_models(tokenizer, batch):
    """InRa's path A is the base model and path B the expanded model: DeRa over exactly these two must agree."""
    from trl_realign.modeling.adapter import adapter_parameter_names, add_layer_adapter
    from trl_realign.modeling.inra import InRaForCausalLM

    base = tiny_causal_lm("qwen2", seed=4, vocab_size=len(tokenizer))
    expanded = add_layer_adapter(tiny_causal_lm("qwen2", seed=4, vocab_size=len(tokenizer)))
    adapter = set(adapter_parameter_names(expanded))
    torch.manual_seed(5)
    with torch.no_grad():  # a "trained" adapter: the identity init would make both paths equal
        for name, param in expanded.named_parameters():
            if name in adapter:
                param.add_(torch.randn_like(param) * 0.3)
    inra = InRaForCausalLM.from_model(expanded)
    dera = DeRaForCausalLM(aligned_model=expanded, ref_model=base)  # the expanded model run as a plain model

    lambdas = torch.tensor([-0.5, 0.6, 1.5])
    with torch.no_grad():
        torch.testing.assert_close(
            inra(**batch, realign_lambda=lambdas).logits.float(),
            dera(**batch, realign_lambda=lambdas).logits,
            rtol=1e-5,
            atol=1e-5,
        )
    for realign_lambda in (lambdas, 0.0, 1.0):
        kwargs = dict(max_new_tokens=8, do_sample=False, realign_lambda=realign_lambda)
        assert torch.equal(inra.generate(**batch, **kwargs), dera.generate(**batch, **kwargs))
    # the adapter matters, so agreeing at every λ is not trivial
    ends = [dera.generate(**batch, max_new_tokens=8, do_sample=False, realign_lambda=lam) for lam in (0.0, 1.0)]
    assert not torch.equal(*ends)


def test_wrapping_leaves_both_models_bitwise_unchanged(tokenizer):
    aligned = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer), tie_word_embeddings=True)
    ref = tiny_causal_lm("qwen2", seed=2, vocab_size=len(tokenizer))
    for module in list(aligned.modules()) + list(ref.modules()):
        # as for modules swapped in by a user: nothing marks them as initialised, so an init pass would redo them
        module.__dict__.pop("_is_hf_initialized", None)

    def weights():
        models = (("aligned", aligned), ("ref", ref))
        return {f"{role}.{name}": t.clone() for role, m in models for name, t in m.state_dict().items()}

    before = weights()
    DeRaForCausalLM(aligned, ref)
    after = weights()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
