"""The teacher cache: capture once, then TrRa from the cache equals live TrRa, and a cache that does not fit is refused."""

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from trl_realign import (
    LayerAdapterTrRaConfig,
    LayerAdapterTrRaTrainer,
    OnPolicyTrRaConfig,
    TrRaConfig,
    TrRaTrainer,
    build_teacher_cache,
    train_trra_iterations,
)
from trl_realign.data.teacher_cache import TeacherCache, TeacherCacheError
from trl_realign.testing import tiny_causal_lm

from launching import free_port, run
from tiny_training import training_kwargs


PROMPTS = ["12+7=", "3+45=", "60+1=", "9+9=", "14+22=", "5+0=", "31+8=", "2+76="]


def dataset(n=16, offset=0):
    rows = [{"prompt": p, "completion": str(eval(p[:-1]) + offset) * (1 + i % 3)} for i, p in enumerate(PROMPTS * 4)]
    return Dataset.from_list(rows[:n])


@pytest.fixture(scope="module")
def ab():
    from trl_realign.data.tokenizer import build_char_tokenizer

    vocab = len(build_char_tokenizer())
    return tiny_causal_lm("qwen2", seed=0, vocab_size=vocab), tiny_causal_lm("qwen2", seed=1, vocab_size=vocab)


def fresh(model):
    return copy.deepcopy(model).requires_grad_(True)


def args_for(tmp_path, cache=None, config=TrRaConfig, **kwargs):
    kwargs = training_kwargs(tmp_path, **{"max_steps": 5, "learning_rate": 1e-3, **kwargs})
    return config(**kwargs, teacher_cache=None if cache is None else str(cache))


def capture(tmp_path, a, b, tokenizer, name="cache", data=None, **kwargs):
    cache = tmp_path / name
    args = args_for(tmp_path, cache, **kwargs)
    build_teacher_cache(fresh(a), b, args, data or dataset(), processing_class=tokenizer, ref_model=a, shard_bytes=4000)
    return cache


def train(tmp_path, a, b, tokenizer, cache=None, data=None, **kwargs):
    teachers = {} if cache else {"ref_model": a, "aligned_model": b}
    trainer = TrRaTrainer(model=fresh(a), args=args_for(tmp_path, cache, **kwargs), train_dataset=data or dataset(),
                          processing_class=tokenizer, **teachers)
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer.model


def assert_same_run(live, cached):
    (live_losses, live_model), (cached_losses, cached_model) = live, cached
    assert len(live_losses) == len(cached_losses) >= 5
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(live_losses), atol=1e-5, rtol=0)
    for (name, p), q in zip(live_model.named_parameters(), cached_model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=name)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory, ab, tokenizer):
    return capture(tmp_path_factory.mktemp("shared"), *ab, tokenizer)


@pytest.mark.parametrize("lam", [-0.5, 0.5, 2.0])
@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_training_from_the_cache_equals_live_trra(tmp_path, ab, tokenizer, shared_cache, divergence, lam):
    kwargs = dict(realign_lambda=lam, divergence=divergence)
    if lam == 0.5:  # with gradient accumulation: two micro-batches of 2 rows a step
        kwargs.update(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    live = train(tmp_path, *ab, tokenizer, **kwargs)
    cached = train(tmp_path, *ab, tokenizer, cache=shared_cache, **kwargs)
    assert_same_run(live, cached)


def test_lambda_zero_with_the_student_at_a_gives_zero_loss(tmp_path, ab, tokenizer, shared_cache):
    trainer = TrRaTrainer(model=fresh(ab[0]), args=args_for(tmp_path, shared_cache, realign_lambda=0.0),
                          train_dataset=dataset(), processing_class=tokenizer)
    assert trainer.aligned_model is None and trainer.ref_model is None
    # The capture's first batch (its padding decides the float rounding of the hidden states): exactly A's forward
    cache = TeacherCache(str(shared_cache))
    rows = set(range(min(cache.shard_starts[1], trainer.args.per_device_eval_batch_size)))
    examples = [row for row in trainer.train_dataset if row["teacher_cache_row"] in rows]
    batch = trainer._prepare_inputs(trainer.data_collator(sorted(examples, key=lambda r: r["teacher_cache_row"])))
    assert trainer.compute_loss(trainer.model, batch).item() == 0.0
    # Any other batch: A's hidden states computed with other padding, equal up to float rounding
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert abs(trainer.compute_loss(trainer.model, batch).item()) < 1e-6


def test_cache_layout_and_manifest(ab, tokenizer, shared_cache):
    manifest = json.loads((shared_cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["format_version"] == 1 and manifest["num_shards"] > 1
    assert set(manifest["teachers"]) == {"ref", "aligned"}
    assert {"tokenizer", "chat_template", "max_length", "packing"} <= manifest["run"].keys()
    assert manifest["datasets"]["train"]["rows"] == 16 and manifest["datasets"]["train"]["fingerprint"]
    cache = TeacherCache(str(shared_cache))
    hidden = cache.teachers["ref"]["hidden_size"]
    bytes_hidden = 2 * cache.offsets[-1] * hidden * 4
    shards = sum(os.path.getsize(p) for p in shared_cache.glob("*/shard-*.safetensors"))
    # The shards hold the hidden states and their headers only
    assert bytes_hidden <= shards < bytes_hidden * 1.05 + 200 * 2 * manifest["num_shards"]
    # The cached rows are what a live teacher computes on them
    weight, _ = cache.heads("ref")
    torch.testing.assert_close(weight, ab[0].lm_head.weight)


def test_interrupted_capture_resumes_to_the_same_bytes(tmp_path, ab, tokenizer, monkeypatch):
    whole = capture(tmp_path, *ab, tokenizer, name="whole")
    from trl_realign.data import teacher_cache

    original, written = teacher_cache.TeacherCacheWriter.write_shard, []

    def write_then_die(self, role, shard, hidden):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append((role, shard))
        original(self, role, shard, hidden)

    monkeypatch.setattr(teacher_cache.TeacherCacheWriter, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        capture(tmp_path, *ab, tokenizer, name="resumed")
    with pytest.raises(TeacherCacheError, match="incomplete"):
        TeacherCache(str(tmp_path / "resumed"))
    monkeypatch.setattr(teacher_cache.TeacherCacheWriter, "write_shard", original)
    resumed = capture(tmp_path, *ab, tokenizer, name="resumed")
    files = sorted(p.relative_to(whole) for p in whole.rglob("*.safetensors"))
    assert files == sorted(p.relative_to(resumed) for p in resumed.rglob("*.safetensors"))
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name


def test_truncated_or_missing_shard_is_an_error(tmp_path, ab, tokenizer):
    cache_dir = capture(tmp_path, *ab, tokenizer)
    shard = sorted(cache_dir.glob("aligned/shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    trainer = TrRaTrainer(model=fresh(ab[0]), args=args_for(tmp_path, cache_dir), train_dataset=dataset(),
                          processing_class=tokenizer)
    with pytest.raises(TeacherCacheError, match="corrupt or truncated"):
        trainer.train()
    shard.unlink()
    cache = TeacherCache(str(cache_dir))
    with pytest.raises(TeacherCacheError, match="missing"):
        cache.hidden("aligned", range(len(cache.num_tokens)))


def test_training_from_the_cache_loads_no_teacher(tmp_path, ab, tokenizer, monkeypatch):
    a, b = ab
    for name, model in (("A", a), ("B", b)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    args = args_for(tmp_path, tmp_path / "cache", aligned_model_name_or_path=str(tmp_path / "B"))
    build_teacher_cache(str(tmp_path / "A"), args=args, train_dataset=dataset(), processing_class=tokenizer)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["teachers"]["aligned"]["name_or_path"] == str(tmp_path / "B")
    assert manifest["teachers"]["ref"]["name_or_path"] == str(tmp_path / "A")

    from transformers import PreTrainedModel

    loaded = []
    original = PreTrainedModel.from_pretrained.__func__

    def spy(cls, name, *args, **kwargs):
        loaded.append(str(name))
        return original(cls, name, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    trainer = TrRaTrainer(model=str(tmp_path / "A"), args=args, train_dataset=dataset(), processing_class=tokenizer)
    trainer.train()
    assert loaded == [str(tmp_path / "A")]  # the student only
    assert trainer.aligned_model is None and trainer.ref_model is None
    # The spy sees what a live run loads: the student, then A and B as teachers
    live_args = args_for(tmp_path, None, aligned_model_name_or_path=str(tmp_path / "B"))
    TrRaTrainer(model=str(tmp_path / "A"), args=live_args, train_dataset=dataset(), processing_class=tokenizer)
    assert loaded[1:] == [str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "A")]

    # A different teacher by name is refused, naming both
    other = args_for(tmp_path, tmp_path / "cache", aligned_model_name_or_path=str(tmp_path / "A"))
    with pytest.raises(TeacherCacheError, match="holds"):
        TrRaTrainer(model=str(tmp_path / "A"), args=other, train_dataset=dataset(), processing_class=tokenizer)
    # So is a student that does not start from the cached A
    with pytest.raises(TeacherCacheError, match="starts from"):
        TrRaTrainer(model=str(tmp_path / "B"), args=args, train_dataset=dataset(), processing_class=tokenizer)


def test_a_cache_that_does_not_fit_the_run_is_refused(tmp_path, ab, tokenizer, shared_cache):
    a, b = ab

    def build(data=None, processing_class=tokenizer, **kwargs):
        return TrRaTrainer(model=fresh(a), args=args_for(tmp_path, shared_cache, **kwargs),
                           train_dataset=data or dataset(), processing_class=processing_class)

    with pytest.raises(TeacherCacheError, match="max_length=1024, the run has max_length=8"):
        build(max_length=8)
    with pytest.raises(TeacherCacheError, match="not in the teacher cache"):
        build(data=dataset(offset=1))
    with pytest.raises(TeacherCacheError, match="another tokenizer"):
        other = copy.deepcopy(tokenizer)
        other.add_tokens(["<extra>"])
        build(processing_class=other)
    with pytest.raises(TeacherCacheError, match="no model object"):
        TrRaTrainer(model=fresh(a), aligned_model=b, args=args_for(tmp_path, shared_cache), train_dataset=dataset(),
                    processing_class=tokenizer)
    with pytest.raises(ValueError, match="packing=False"):
        args_for(tmp_path, shared_cache, packing=True)
    with pytest.raises(TeacherCacheError, match="No teacher cache"):
        build_missing = args_for(tmp_path, tmp_path / "nowhere")
        TrRaTrainer(model=fresh(a), args=build_missing, train_dataset=dataset(), processing_class=tokenizer)
    with pytest.raises(ValueError, match="On-policy TrRa cannot"):
        OnPolicyTrRaConfig(**training_kwargs(tmp_path), teacher_cache=str(shared_cache))
    # The student is checked as in a live run
    with pytest.raises(ValueError, match="no trainable parameters"):
        TrRaTrainer(model=copy.deepcopy(a).requires_grad_(False), args=args_for(tmp_path, shared_cache),
                    train_dataset=dataset(), processing_class=tokenizer)
    # A subset of the captured rows, in another order, is served
    build(data=dataset().shuffle(seed=3).select(range(8)))


def test_other_format_version_is_refused(tmp_path, ab, tokenizer):
    cache = capture(tmp_path, *ab, tokenizer)
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(TeacherCacheError, match="format version 99"):
        TeacherCache(str(cache))


def test_layer_adapter_trra_from_the_cache_equals_live(tmp_path, ab, tokenizer):
    a, b = ab

    def run_adapter(cache):
        args = args_for(tmp_path, cache, config=LayerAdapterTrRaConfig, realign_lambda=1.5, learning_rate=1e-2)
        kwargs = {} if cache else {"aligned_model": b}
        trainer = LayerAdapterTrRaTrainer(model=copy.deepcopy(a), args=args, train_dataset=dataset(),
                                          processing_class=tokenizer, **kwargs)
        trainer.train()
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer.model

    cache = tmp_path / "adapter_cache"
    args = args_for(tmp_path, cache, config=LayerAdapterTrRaConfig, realign_lambda=1.5)
    build_teacher_cache(copy.deepcopy(a), b, args, dataset(), processing_class=tokenizer,
                        trainer_class=LayerAdapterTrRaTrainer)
    # A is the model with its adapter bypassed: the original model
    assert TeacherCache(str(cache)).teachers["ref"]["hidden_size"] == a.config.hidden_size
    assert_same_run(run_adapter(None), run_adapter(cache))


def test_trra_iter_from_a_cache_captures_a_once(tmp_path, ab, tokenizer, monkeypatch):
    a, b = ab

    def iterate(cache, out):
        args = args_for(tmp_path, cache, output_dir=str(tmp_path / out), realign_lambda=2.0)
        paths = train_trra_iterations(fresh(a), b, args, num_iterations=2, train_dataset=dataset(),
                                      processing_class=tokenizer, ref_model=a)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(paths[-1])

    live = iterate(None, "live")
    cache = tmp_path / "iter_cache"
    cached = iterate(cache, "cached")
    for (name, p), q in zip(live.named_parameters(), cached.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=name)
    # A was captured once: iteration 2's cache points at the first one's
    second = json.loads((cache / "iter2" / "manifest.json").read_text())
    assert second["teachers"]["ref"]["directory"] == os.path.join("..", "ref")
    assert not (cache / "iter2" / "ref").exists()


def test_bf16_cache_matches_live_bf16_teachers_within_the_bound(tmp_path, ab, tokenizer):
    a, b = (m.to(torch.bfloat16) for m in copy.deepcopy(ab))
    cache = tmp_path / "bf16"
    args = args_for(tmp_path, cache, realign_lambda=2.0)
    build_teacher_cache(fresh(a), b, args, dataset(), processing_class=tokenizer, ref_model=a)
    assert TeacherCache(str(cache)).teachers["aligned"]["dtype"] == "bfloat16"

    def first_loss(cache_dir):
        teachers = {} if cache_dir else {"ref_model": a, "aligned_model": b}
        trainer = TrRaTrainer(model=fresh(a), args=args_for(tmp_path, cache_dir, realign_lambda=2.0),
                              train_dataset=dataset(), processing_class=tokenizer, **teachers)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item()

    live, cached = first_loss(None), first_loss(cache)
    # The cache stores the same bf16 hidden states the live teachers produce; only their batch (padding) differs, so
    # the stored values may differ by one bf16 rounding (2^-8 relative) where the forward's float order changes
    assert abs(cached - live) <= 2**-8 * abs(live) + 1e-6


def test_two_processes_capture_and_train_like_one_also_under_zero3(tmp_path):
    script = Path(__file__).parent / "scripts" / "trra_cache_one_step.py"

    def launch(nproc, *args):
        prefix = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"
        ]
        run([*prefix, str(script), *map(str, args)], tmp_path, timeout=300)

    launch(2, "capture+train", tmp_path / "cache2", tmp_path / "two.pt", 2)
    # ZeRO-3 shards the student; the cached heads are plain tensors beside it
    launch(2, "train", tmp_path / "cache2", tmp_path / "zero3.pt", 2, script.parent / "ds_zero3.json")
    # The same in this process: one process captures everything and trains on the whole batch
    sys.path.insert(0, str(script.parent))
    try:
        from trra_cache_one_step import main as one_process
    finally:
        sys.path.remove(str(script.parent))
    one_process("capture", str(tmp_path / "cache1"), str(tmp_path / "unused"), 4)
    one_process("train", str(tmp_path / "cache2"), str(tmp_path / "one.pt"), 4)

    one_process, two_processes = TeacherCache(str(tmp_path / "cache1")), TeacherCache(str(tmp_path / "cache2"))
    rows = range(len(one_process.num_tokens))
    assert two_processes.num_shards >= 4
    for role in ("ref", "aligned"):
        torch.testing.assert_close(two_processes.hidden(role, rows), one_process.hidden(role, rows), atol=1e-6, rtol=0)
    one = torch.load(tmp_path / "one.pt")
    for name in ("two.pt", "zero3.pt"):
        other = torch.load(tmp_path / name)
        for k in one:
            torch.testing.assert_close(other[k], one[k], atol=1e-6, rtol=1e-5, msg=f"{name}: {k}")


def test_cache_teachers_command_needs_the_folder(tmp_path):
    from trl_realign.cli.main import run_command

    with pytest.raises(ValueError, match="needs the folder to write"):
        run_command(["cache-teachers", "--model_name_or_path", str(tmp_path), "--aligned_model_name_or_path", str(tmp_path),
              "--dataset_name", str(tmp_path), "--use_cpu", "true", "--bf16", "false"])


def test_evaluation_rows_are_captured_and_evaluated_from_the_cache(tmp_path, ab, tokenizer):
    a, b = ab
    train_data, eval_data = dataset(8), dataset(6, offset=1)  # evaluation rows the training data do not have
    cache = tmp_path / "with_eval"
    build_teacher_cache(fresh(a), b, args_for(tmp_path, cache, eval_strategy="steps", eval_steps=5), train_data,
                        eval_data, processing_class=tokenizer, ref_model=a)
    assert TeacherCache(str(cache)).manifest["datasets"]["eval"]["rows"] == 6

    def trainer_for(cache_dir, eval_dataset):
        teachers = {} if cache_dir else {"ref_model": a, "aligned_model": b}
        return TrRaTrainer(model=fresh(a), args=args_for(tmp_path, cache_dir, realign_lambda=2.0,
                                                         per_device_eval_batch_size=2),
                           train_dataset=train_data, eval_dataset=eval_dataset, processing_class=tokenizer, **teachers)

    live = trainer_for(None, {"held_out": eval_data}).evaluate()["eval_held_out_loss"]
    assert trainer_for(cache, {"held_out": eval_data}).evaluate()["eval_held_out_loss"] == pytest.approx(live, abs=1e-6)
    # A dataset given to `evaluate` itself is matched to the cache too
    assert trainer_for(cache, None).evaluate(eval_data)["eval_loss"] == pytest.approx(live, abs=1e-6)
    with pytest.raises(TeacherCacheError, match="not in the teacher cache"):
        trainer_for(cache, None).evaluate(dataset(4, offset=2))


def test_cli_captures_then_trains_and_a_mismatch_is_one_line(tmp_path, ab, tokenizer, capsys):
    from trl_realign.cli.main import main, run_command

    for name, model in zip("AB", ab):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    dataset().to_json(tmp_path / "data.jsonl")
    common = ["--model_name_or_path", str(tmp_path / "A"), "--aligned_model_name_or_path", str(tmp_path / "B"),
              "--dataset_name", str(tmp_path / "data.jsonl"), "--teacher_cache", str(tmp_path / "cache"),
              "--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--report_to", "none", "--max_steps", "1",
              "--save_strategy", "no", "--disable_tqdm", "true"]  # fmt: skip
    run_command(["cache-teachers", *common, "--output_dir", str(tmp_path / "capture")])
    assert "Teacher cache in" in capsys.readouterr().out
    run_command(["trra", *common, "--output_dir", str(tmp_path / "out"), "--realign_lambda", "3"])
    assert (tmp_path / "out" / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_:
        main(["trra", *common, "--output_dir", str(tmp_path / "out2"), "--max_length", "8"])
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("trl-realign trra: error: The teacher cache") and "max_length=8" in lines[-1]
    assert not any("Traceback" in line for line in lines)
