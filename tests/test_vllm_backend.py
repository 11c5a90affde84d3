"""The vLLM backend of `evaluate` against a fake OpenAI-compatible server (no vLLM needed; see fake_vllm_server.py)."""

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_vllm_server import FakeVLLMServer, fake_tokens
from trl_realign.evaluation import EvalConfig, SamplingSettings, evaluate, summarize
from trl_realign.evaluation.vllm_backend import (
    VLLMBackend,
    VLLMRequestError,
    check_server_takes_lambda,
    normalize_base_url,
    parse_completions,
    served_model,
)
from trl_realign.evaluation.vllm_server import VLLMServer, VLLMServerError, inra_overrides
from trl_realign.testing import tiny_causal_lm, tiny_config


FIXTURES = Path(__file__).parent / "fixtures"
ARITHMETIC = str(FIXTURES / "arithmetic.jsonl")  # columns: question, answer
FAKE_SERVER = str(Path(__file__).parent / "fake_vllm_server.py")
EOS = 3  # tiny_config's and the char tokenizer's EOS id


def fake_python(tmp_path, script: str | None = None) -> str:
    """An executable standing in for a vLLM environment's python: runs the fake server, or `script` (sh)."""
    path = tmp_path / "fake-venv" / "bin" / "python"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script or f'#!/bin/sh\nshift 2\nexec "{sys.executable}" "{FAKE_SERVER}" -m api_server "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def expected(tokenizer, prompt_ids, lam, sample, seed, max_tokens):
    ids, reason = fake_tokens(prompt_ids, lam, sample, seed, {"max_tokens": max_tokens, "stop_token_ids": [EOS]})
    return tokenizer.decode(ids, skip_special_tokens=True), len(ids), reason == "stop"


# ------------------------------------------------------------------------------------------------------ the client


def test_backend_sends_one_request_per_prompt_with_n_lambda_and_seed(tokenizer):
    prompts = ["12+3=", "17+70=", "12+3="]  # even-length prompts end in EOS on the fake server
    sampling = SamplingSettings(max_new_tokens=5, temperature=0.7, top_p=0.9, top_k=4)
    with FakeVLLMServer() as server:
        backend = VLLMBackend(server.base_url + "/v1", "fake-model", tokenizer, [EOS, 9], seed=100, max_concurrency=2)
        results = backend(prompts, [0.0, 0.5, 1.5], sampling, 3)
    bodies = sorted(server.completion_requests(), key=lambda body: body["seed"])
    assert len(bodies) == 3  # one per (prompt, λ), n samples each
    for k, (body, prompt, lam) in enumerate(zip(bodies, prompts, [0.0, 0.5, 1.5])):
        assert body == {
            "model": "fake-model", "prompt": tokenizer(prompt, add_special_tokens=False)["input_ids"], "n": 3,
            "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 4, "stop_token_ids": [EOS, 9],
            "return_token_ids": True, "seed": 100 + 3 * k, "vllm_xargs": {"realign_lambda": lam},
        }  # fmt: skip
    for k, (prompt, lam) in enumerate(zip(prompts, [0.0, 0.5, 1.5])):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert len(results[k]) == 3
        for sample, completion in enumerate(results[k]):  # in sample order, although the server sent them reversed
            text, num_tokens, finished = expected(tokenizer, ids, lam, sample, 100 + 3 * k, 5)
            assert (completion.text, completion.num_tokens, completion.finished) == (text, num_tokens, finished)
    assert {c.finished for samples in results for c in samples} == {True, False}  # both endings are exercised


def test_no_two_samples_share_a_random_stream(tokenizer):
    # vLLM seeds sample j of a request seeded s with s + j: request k must start past the previous requests' samples
    with FakeVLLMServer() as server:
        backend = VLLMBackend(server.base_url, "fake-model", tokenizer, [EOS], seed=7)
        backend(["1+1=", "1+1=", "2+2="], [0.0, 1.0, 0.0], SamplingSettings(max_new_tokens=2, temperature=1.0), 3)
    streams = sorted(body["seed"] + j for body in server.completion_requests() for j in range(body["n"]))
    assert streams == list(range(7, 7 + 9))


def test_a_sweep_that_does_not_fit_the_servers_context_is_refused_before_any_request(tokenizer):
    prompts = ["1+1=", "12345+678="]  # 4 and 10 tokens
    with FakeVLLMServer(max_model_len=12) as server:
        backend = VLLMBackend(server.base_url, "fake-model", tokenizer, [EOS])
        message = r"\(10 tokens\) \+ max_new_tokens 5 = 15 tokens exceed the vLLM server's max_model_len 12: "
        with pytest.raises(ValueError, match=message + r".*--max-model-len 15.* or use a smaller max_new_tokens"):
            backend(prompts, [0.5, 0.5], SamplingSettings(max_new_tokens=5), 1)
        assert server.completion_requests() == []  # vLLM would have cut prompt 1's completion at 2 tokens
        backend(prompts, [0.5, 0.5], SamplingSettings(max_new_tokens=2), 1)  # 10 + 2 fits
        assert len(server.completion_requests()) == 2


def test_plain_model_requests_carry_no_lambda_and_add_special_tokens(tokenizer):
    class BosTokenizer:  # the char tokenizer adds no BOS; this one does, when asked
        def __call__(self, texts, add_special_tokens):
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            return {"input_ids": [[tokenizer.bos_token_id] * add_special_tokens + row for row in ids]}

        def decode(self, ids, skip_special_tokens):
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    with FakeVLLMServer() as server:
        backend = VLLMBackend(server.base_url, "fake-model", BosTokenizer(), [EOS], add_special_tokens=True)
        backend(["1+1="], None, SamplingSettings(max_new_tokens=3), 1)
    (body,) = server.completion_requests()
    assert "vllm_xargs" not in body and "seed" not in body
    assert body["prompt"] == [tokenizer.bos_token_id] + tokenizer("1+1=", add_special_tokens=False)["input_ids"]
    assert body["temperature"] == 0.0 and body["n"] == 1


def test_completions_are_counted_by_the_packages_rule(tokenizer):
    answer = {"choices": [
        {"index": 1, "token_ids": [20, 21, 22], "finish_reason": "length"},
        {"index": 0, "token_ids": [20, EOS], "finish_reason": "stop"},
    ]}  # fmt: skip
    first, second = parse_completions(answer, 2, [EOS], tokenizer)
    assert (first.token_ids, first.finished) == ([20, EOS], True)
    assert (second.token_ids, second.finished, second.num_tokens) == ([20, 21, 22], False, 3)
    assert first.text == tokenizer.decode([20], skip_special_tokens=True)
    # Anything after the first EOS is not the completion's (the transformers backend's rule)
    (cut,) = parse_completions({"choices": [{"index": 0, "token_ids": [20, EOS, 21], "finish_reason": "stop"}]}, 1,
                               [EOS], tokenizer)  # fmt: skip
    assert cut.token_ids == [20, EOS]
    with pytest.raises(VLLMRequestError, match="without one of the EOS ids"):
        parse_completions({"choices": [{"index": 0, "token_ids": [20], "finish_reason": "stop"}]}, 1, [EOS], tokenizer)
    with pytest.raises(VLLMRequestError, match="finish_reason='abort'"):
        parse_completions({"choices": [{"index": 0, "token_ids": [20], "finish_reason": "abort"}]}, 1, [EOS], tokenizer)
    with pytest.raises(VLLMRequestError, match="Expected 2 choices with `token_ids`"):
        parse_completions({"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}, 2, [EOS], tokenizer)


def test_a_refused_request_is_a_clear_error(tokenizer):
    message = "This model's maximum context length is 64 tokens. However, you requested 4100 tokens."
    with FakeVLLMServer(fail_with=(400, message)) as server:
        backend = VLLMBackend(server.base_url, "fake-model", tokenizer, [EOS])
        with pytest.raises(VLLMRequestError, match="HTTP 400") as error:
            backend(["1+1=", "2+2="], [0.25, 0.25], SamplingSettings(max_new_tokens=4), 1)
    assert message in str(error.value) and "λ=0.25" in str(error.value)
    with FakeVLLMServer() as server:  # a bad λ is refused before anything is sent
        backend = VLLMBackend(server.base_url, "fake-model", tokenizer, [EOS])
        with pytest.raises(TypeError, match="`realign_lambda` must be a number"):
            backend(["1+1="], ["high"], SamplingSettings(max_new_tokens=2), 1)
        with pytest.raises(ValueError, match="`realign_lambda` must be finite"):
            backend(["1+1="], [float("inf")], SamplingSettings(max_new_tokens=2), 1)
    assert server.requests == []


def test_a_failed_request_is_raised_without_waiting_for_the_others(tokenizer):
    release = threading.Event()

    def hook(body):
        if body["vllm_xargs"]["realign_lambda"] == 1.0:
            release.wait(60)  # a long generation still running
            return None
        return 400, {"error": {"message": "prompt too long", "code": 400}}

    with FakeVLLMServer(hook=hook) as server:
        backend = VLLMBackend(server.base_url, "fake-model", tokenizer, [EOS], max_concurrency=2)
        start = time.monotonic()
        with pytest.raises(VLLMRequestError, match="Prompt 1 at λ=0.0: .*prompt too long"):
            backend(["1+1=", "2+2="], [1.0, 0.0], SamplingSettings(max_new_tokens=2), 1)
        assert time.monotonic() - start < 30
        release.set()


def test_backend_refuses_what_it_cannot_do(tokenizer):
    backend = VLLMBackend("http://127.0.0.1:9", "m", tokenizer, [EOS])
    with pytest.raises(ValueError, match="one per prompt"):
        backend(["a", "b"], [0.5], SamplingSettings(max_new_tokens=2), 1)
    with pytest.raises(ValueError, match="Beam search"):
        backend(["a"], None, SamplingSettings(max_new_tokens=2, num_beams=2), 1)
    with pytest.raises(ValueError, match="Greedy decoding gives one completion"):
        backend(["a"], None, SamplingSettings(max_new_tokens=2), 2)
    with pytest.raises(VLLMRequestError, match="Could not reach the vLLM server at http://127.0.0.1:9"):
        backend(["a"], None, SamplingSettings(max_new_tokens=2), 1)
    with pytest.raises(ValueError, match="must start with http"):
        normalize_base_url("127.0.0.1:8000")
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"


def never_called() -> bool:
    raise AssertionError("the adapter need not be read when λ changes the output")


def test_served_model_and_the_plugin_check():
    with FakeVLLMServer(model="/ckpt/inra") as server:
        assert served_model(server.base_url, "/ckpt/inra") == "/ckpt/inra"
        assert served_model(server.base_url, "./elsewhere") == "/ckpt/inra"  # the server's only model
        check_server_takes_lambda(server.base_url, "/ckpt/inra", adapter_is_identity=never_called)
    probes = [body for body in server.requests if body.get("logprobs")]
    assert [(body["max_tokens"], body["vllm_xargs"]) for body in probes] == [
        (1, {"realign_lambda": 0.0}), (1, {"realign_lambda": 1.0})
    ]  # fmt: skip
    with FakeVLLMServer(plugin=False) as server:
        with pytest.raises(VLLMRequestError, match="without the trl-realign-vllm plugin"):
            check_server_takes_lambda(server.base_url, "fake-model", adapter_is_identity=never_called)


def test_the_plugin_check_proves_that_lambda_changes_the_output(caplog):
    # The plugin is loaded (it validates λ for any model), but the checkpoint is served by vLLM's stock class
    with FakeVLLMServer(lambda_matters=False) as server:
        with pytest.raises(VLLMRequestError, match="the same log-probabilities at λ=0 and λ=1.*`--hf-overrides`"):
            check_server_takes_lambda(server.base_url, "fake-model", adapter_is_identity=lambda: False)
        # An untrained (identity) adapter: every λ is the same model, so routing cannot be shown, nor can it matter
        with caplog.at_level(logging.WARNING, logger="trl_realign"):
            check_server_takes_lambda(server.base_url, "fake-model", adapter_is_identity=lambda: True)
    assert "adapter is the identity" in caplog.text


# ---------------------------------------------------------------------------------------------------- the launcher


def test_inra_overrides_route_to_the_plugin_class():
    config = tiny_config("qwen2")
    config.architectures = ["Qwen2ForCausalLM"]
    routing = {"architectures": ["InRaQwen2ForCausalLM"], "layer_adapter": {"num_adapters": 2}}
    assert inra_overrides(config, 2) == routing
    with pytest.raises(ValueError, match="no `layer_adapter` marker: give `num_adapters`"):
        inra_overrides(config, None)
    config.layer_adapter = {"num_adapters": 1}
    assert inra_overrides(config, None) == {"architectures": ["InRaQwen2ForCausalLM"]}
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        inra_overrides(config, 1)


def test_launch_args_merge_the_inra_routing_into_the_users_overrides(checkpoints):
    from trl_realign.evaluation.vllm_session import launch_args

    routing = {"architectures": ["InRaQwen2ForCausalLM"]}
    for mine in ("--hf-overrides '{\"max_position_embeddings\": 4096}' --enforce-eager",
                 "--hf_overrides='{\"max_position_embeddings\": 4096}' --enforce-eager"):  # fmt: skip
        args = launch_args(checkpoints["inra"], mine, inra=True, num_adapters=None, dtype="float32")
        assert args[0] == "--hf-overrides" and args[2:] == ["--enforce-eager", "--dtype", "float32"]
        assert json.loads(args[1]) == {"max_position_embeddings": 4096, **routing}
    marker = {"layer_adapter": {"num_adapters": 1}}
    args = launch_args(checkpoints["inra"], f"--hf-overrides '{json.dumps(marker)}'", inra=True, num_adapters=1,
                       dtype="float32")  # fmt: skip
    assert json.loads(args[1]) == {**marker, **routing}  # the same value twice is no conflict
    refused = [
        ("--hf-overrides '{\"architectures\": [\"Qwen2ForCausalLM\"]}'", 1, "`architectures` .*InRaQwen2ForCausalLM"),
        ("--hf-overrides '{\"layer_adapter\": {\"num_adapters\": 2}}'", 1, "`layer_adapter`"),
        ("--hf-overrides '[1]'", None, "must be a JSON object"),
        ("--hf-overrides '{\"a\": 1}' --hf-overrides '{\"b\": 1}'", None, "once"),
        ("--hf-overrides.max_position_embeddings 4096", None, "one JSON object"),
    ]  # fmt: skip
    for mine, num_adapters, message in refused:
        with pytest.raises(ValueError, match=message):
            launch_args(checkpoints["inra"], mine, inra=True, num_adapters=num_adapters, dtype="float32")
    plain = "--hf-overrides.max_position_embeddings 4096"  # a plain checkpoint's overrides are the user's business
    assert launch_args(checkpoints["plain"], plain, inra=False, num_adapters=None, dtype="auto")[:2] == plain.split()


def test_started_servers_get_the_checkpoints_dtype_unless_chosen(tmp_path, checkpoints):
    from trl_realign.evaluation.vllm_session import launch_args

    # vLLM's "auto" would serve an fp32 checkpoint in 16 bits; the transformers backend loads it in fp32
    assert launch_args(checkpoints["plain"], "", inra=False, num_adapters=None, dtype="auto") == ["--dtype", "float32"]
    assert launch_args(checkpoints["plain"], "--dtype=half", inra=False, num_adapters=None, dtype="auto") == [
        "--dtype=half"
    ]  # fmt: skip
    assert launch_args(checkpoints["plain"], None, inra=False, num_adapters=None, dtype="bfloat16") == [
        "--dtype", "bfloat16"
    ]  # fmt: skip
    for key, dtype in (("dtype", "bfloat16"), ("torch_dtype", "float16")):  # transformers 5's key, then the old one
        (tmp_path / key).mkdir()
        (tmp_path / key / "config.json").write_text(json.dumps({"model_type": "llama", key: dtype}))
        assert launch_args(str(tmp_path / key), "", inra=False, num_adapters=None, dtype="auto") == ["--dtype", dtype]


def test_launch_args_add_the_inra_routing_and_dtype_unless_given(checkpoints):
    from trl_realign.evaluation.vllm_session import launch_args

    args = launch_args(checkpoints["inra"], "--max-model-len 64", inra=True, num_adapters=None, dtype="float32")
    assert args == ["--max-model-len", "64", "--hf-overrides", '{"architectures": ["InRaQwen2ForCausalLM"]}',
                    "--dtype", "float32"]  # fmt: skip
    mine = "--hf-overrides '{\"architectures\": [\"InRaQwen2ForCausalLM\"], \"x\": 1}' --dtype=bfloat16"
    assert launch_args(checkpoints["inra"], mine, inra=True, num_adapters=None, dtype="float32") == [
        "--hf-overrides", '{"architectures": ["InRaQwen2ForCausalLM"], "x": 1}', "--dtype=bfloat16"
    ]  # fmt: skip


def test_adapter_is_identity_reads_the_adapters_residual_writers(checkpoints):
    from trl_realign.evaluation.vllm_session import adapter_is_identity

    assert adapter_is_identity(checkpoints["inra"], None)
    assert adapter_is_identity(checkpoints["inra"], 1)
    assert not adapter_is_identity(checkpoints["inra_trained"], None)
    assert not adapter_is_identity(checkpoints["plain"], 1)  # layer 0 of a plain model writes to the residual


def test_eos_ids_of_a_checkpoint_are_those_the_transformers_backend_stops_at(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from trl_realign.evaluation import resolve_eos_token_ids
    from trl_realign.evaluation.vllm_session import checkpoint_eos_token_ids

    model = tiny_causal_lm("llama", vocab_size=len(tokenizer), eos_token_id=5)
    model.generation_config.eos_token_id = [9, 11]
    model.save_pretrained(tmp_path / "with")
    assert checkpoint_eos_token_ids(str(tmp_path / "with"), tokenizer) == [9, 11, EOS]
    os.remove(tmp_path / "with" / "generation_config.json")  # then the config's EOS, as from_pretrained does
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "with")
    assert checkpoint_eos_token_ids(str(tmp_path / "with"), tokenizer) == resolve_eos_token_ids(loaded, tokenizer)
    assert resolve_eos_token_ids(loaded, tokenizer) == [5, EOS]


def test_a_server_that_never_becomes_ready_times_out_with_its_log_and_is_stopped(tmp_path):
    never_ready = fake_python(tmp_path, '#!/bin/sh\necho "Loading weights took forever"\nexec sleep 300\n')
    server = VLLMServer(never_ready, "some/model", "--max-model-len 64", log_path=str(tmp_path / "log.txt"),
                        startup_timeout=3)  # fmt: skip
    start = time.monotonic()
    with pytest.raises(VLLMServerError, match="did not answer .* within 3 s") as error:
        server.start()
    assert "Loading weights took forever" in str(error.value)
    assert time.monotonic() - start < 60
    assert server.process.poll() is not None  # stopped, not left running
    with pytest.raises(ProcessLookupError):
        os.killpg(server.process.pid, 0)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    crashing = fake_python(tmp_path, '#!/bin/sh\necho "ValueError: unknown architecture" >&2\nexit 3\n')
    with pytest.raises(VLLMServerError, match="exited with code 3") as error:
        with VLLMServer(crashing, "m", log_path=str(tmp_path / "log.txt"), startup_timeout=60):
            pass
    assert "unknown architecture" in str(error.value)


def test_launcher_refuses_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="No Python interpreter at"):
        VLLMServer(str(tmp_path / "nope" / "python"), "m", log_path=str(tmp_path / "log"))
    with pytest.raises(ValueError, match="set by the launcher"):
        VLLMServer(fake_python(tmp_path), "m", "--port=8000 --dtype float32", log_path=str(tmp_path / "log"))


TERMINATED = """
import sys, time
from trl_realign.evaluation.vllm_server import VLLMServer

with VLLMServer(sys.argv[1], "m", log_path=sys.argv[2]) as server:
    print("SERVER", server.process.pid, flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_evaluation_leaves_no_server_behind(tmp_path, sig):
    # The server runs in its own session: it outlives its parent unless the launcher stops it on SIGTERM (the
    # context manager's exit never runs then) and the kernel ends it with the parent (SIGKILL: no handler runs)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    parent = subprocess.Popen([sys.executable, "-c", TERMINATED, fake_python(tmp_path), str(tmp_path / "log")],
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    server_pid = next(int(line.split()[1]) for line in parent.stdout if line.startswith("SERVER "))
    try:
        parent.send_signal(sig)
        assert parent.wait(timeout=60) == -sig  # the parent still dies of the signal
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(server_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.killpg(server_pid, 0)
    finally:
        try:
            os.killpg(server_pid, signal.SIGKILL)  # an orphan of a failed run
        except ProcessLookupError:
            pass


def test_the_sigterm_handler_is_the_launchers_only_while_the_server_runs(tmp_path):
    received = []

    def previous(signum, frame):
        received.append(signum)

    original = signal.signal(signal.SIGTERM, previous)
    try:
        with VLLMServer(fake_python(tmp_path), "m", log_path=str(tmp_path / "log")) as server:
            assert signal.getsignal(signal.SIGTERM) is not previous
            os.kill(os.getpid(), signal.SIGTERM)
            assert received == [signal.SIGTERM]  # the previous handler still runs, after the server is stopped
            assert server.process.poll() is not None
            assert signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


def test_launched_server_serves_and_is_stopped_on_exit(tmp_path):
    log = tmp_path / "log.txt"
    with VLLMServer(fake_python(tmp_path), "the-model", ["--dtype", "float32"], log_path=str(log)) as server:
        assert served_model(server.base_url) == "the-model"
        pid = server.process.pid
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert '["--dtype", "float32"]' in log.read_text()  # the server arguments reached it


# ------------------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    from trl_realign.modeling.adapter import add_layer_adapter

    root = tmp_path_factory.mktemp("checkpoints")
    inra = add_layer_adapter(tiny_causal_lm("qwen2", vocab_size=len(tokenizer)))
    trained = add_layer_adapter(tiny_causal_lm("qwen2", vocab_size=len(tokenizer)), init="kaiming")
    paths = {"inra": str(root / "inra"), "plain": str(root / "plain"), "inra_trained": str(root / "inra_trained")}
    inra.save_pretrained(paths["inra"])
    trained.save_pretrained(paths["inra_trained"])
    tiny_causal_lm("llama", vocab_size=len(tokenizer)).save_pretrained(paths["plain"])
    for path in paths.values():
        tokenizer.save_pretrained(path)
    return paths


def vllm_config(tmp_path, **overrides) -> EvalConfig:
    kwargs = dict(
        output_dir=str(tmp_path / "eval"), dataset_name=ARITHMETIC, prompt_column="question", prompt_template="{prompt}",
        use_chat_template=False, num_samples=2, max_new_tokens=5, scorer="exact_match", disable_tqdm=True,
        backend="vllm", seed=5,
    )  # fmt: skip
    kwargs.update(overrides)
    return EvalConfig(**kwargs)


def logged_requests(log_path) -> list[dict]:
    return [json.loads(line[len("REQUEST ") :]) for line in open(log_path) if line.startswith("REQUEST ")]


def test_evaluate_inra_on_a_started_server(tmp_path, tokenizer, checkpoints):
    def first_digit_is_answer(completion, answer):  # a scorer that the fake's texts sometimes pass
        return float(bool(completion) and completion[0] in answer)

    args = vllm_config(tmp_path, model_name_or_path=checkpoints["inra"], realign_lambdas=[0.0, 1.5],
                       vllm_python=fake_python(tmp_path), vllm_server_args="--max-model-len 64", dtype="float32")  # fmt: skip
    summary = evaluate(args, scorer=first_digit_is_answer)
    records = [json.loads(line) for line in open(os.path.join(args.output_dir, "samples.jsonl"))]
    assert summarize(records) == summary == json.load(open(os.path.join(args.output_dir, "summary.json")))
    assert os.path.getsize(os.path.join(args.output_dir, "lambda_sweep.png")) > 5000
    assert [(row["method"], row["realign_lambda"], row["num_samples"]) for row in summary] == [
        ("inra", 0.0, 6), ("inra", 1.5, 6)
    ]  # fmt: skip
    questions = [json.loads(line)["question"] for line in open(ARITHMETIC)]
    log = os.path.join(args.output_dir, "vllm_server_0.log")
    requests = [r for r in logged_requests(log) if r.get("n")]
    assert len(requests) == len(questions) * 2  # one per (prompt, λ)
    assert {json.dumps(r["vllm_xargs"]) for r in requests} == {'{"realign_lambda": 0.0}', '{"realign_lambda": 1.5}'}
    for record in records:
        ids = tokenizer(questions[record["prompt_index"]])["input_ids"]
        request = next(r for r in requests if r["prompt"] == ids and r["vllm_xargs"]["realign_lambda"] ==
                       record["realign_lambda"])  # fmt: skip
        text, num_tokens, finished = expected(tokenizer, ids, record["realign_lambda"], record["sample_index"],
                                              request["seed"], 5)  # fmt: skip
        assert (record["completion"], record["num_tokens"], record["finished"]) == (text, num_tokens, finished)
        assert record["score"] == (first_digit_is_answer(text, record["answer"]) if finished else 0.0)
    launch = open(log).readline()
    assert "InRaQwen2ForCausalLM" in launch and "--max-model-len" in launch and '"--dtype", "float32"' in launch


def test_evaluate_plain_checkpoints_send_no_lambda(tmp_path, checkpoints):
    args = vllm_config(tmp_path, checkpoints=[checkpoints["plain"], checkpoints["inra"]], realign_lambdas=[0.5, 1.0],
                       vllm_python=fake_python(tmp_path))  # fmt: skip
    summary = evaluate(args)
    assert [(row["method"], row["model"]) for row in summary] == [
        ("checkpoints", checkpoints["plain"]), ("checkpoints", checkpoints["inra"])
    ]  # fmt: skip
    for index in (0, 1):  # one server per checkpoint, no λ, no InRa routing
        log = os.path.join(args.output_dir, f"vllm_server_{index}.log")
        assert all("vllm_xargs" not in r for r in logged_requests(log))
        assert "hf-overrides" not in open(log).readline()


def test_evaluate_on_a_running_server(tmp_path, tokenizer, checkpoints):
    with FakeVLLMServer(model=checkpoints["inra"]) as server:
        args = vllm_config(tmp_path, model_name_or_path=checkpoints["inra"], realign_lambdas=[0.25],
                           vllm_base_url=server.base_url, num_samples=1, temperature=0.0)  # fmt: skip
        (row,) = evaluate(args)
    assert row["num_samples"] == 3
    assert [r["vllm_xargs"] for r in server.completion_requests()] == [{"realign_lambda": 0.25}] * 3
    with FakeVLLMServer(model=checkpoints["inra"], plugin=False) as server:
        args = vllm_config(tmp_path, model_name_or_path=checkpoints["inra"], vllm_base_url=server.base_url)
        with pytest.raises(VLLMRequestError, match="without the trl-realign-vllm plugin"):
            evaluate(args)
        assert server.completion_requests() == []


def test_evaluate_merges_the_inra_routing_into_the_users_overrides(tmp_path, checkpoints):
    # Without the routing, vLLM would serve its stock Qwen2 class: the λ=1 model at every λ
    args = vllm_config(tmp_path, model_name_or_path=checkpoints["inra_trained"], realign_lambdas=[0.0, 1.0],
                       vllm_python=fake_python(tmp_path), num_samples=1, temperature=0.0,
                       vllm_server_args="--hf-overrides '{\"max_position_embeddings\": 4096}'")  # fmt: skip
    evaluate(args)
    launch = open(os.path.join(args.output_dir, "vllm_server_0.log")).readline()
    extra = json.loads(launch.split("extra args ", 1)[1])
    overrides = json.loads(extra[extra.index("--hf-overrides") + 1])
    assert overrides == {"max_position_embeddings": 4096, "architectures": ["InRaQwen2ForCausalLM"]}


def test_evaluate_refuses_a_server_where_lambda_changes_nothing(tmp_path, checkpoints, caplog):
    with FakeVLLMServer(model=checkpoints["inra_trained"], lambda_matters=False) as server:
        args = vllm_config(tmp_path, model_name_or_path=checkpoints["inra_trained"], vllm_base_url=server.base_url)
        with pytest.raises(VLLMRequestError, match="the same log-probabilities at λ=0 and λ=1"):
            evaluate(args)
        assert server.completion_requests() == []
    with FakeVLLMServer(model=checkpoints["inra"], lambda_matters=False) as server:  # an identity adapter
        args = vllm_config(tmp_path, model_name_or_path=checkpoints["inra"], vllm_base_url=server.base_url,
                           realign_lambdas=[0.0, 1.0], num_samples=1, temperature=0.0)  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="trl_realign"):
            assert len(evaluate(args)) == 2
    assert "adapter is the identity" in caplog.text


def test_evaluate_refuses_a_sweep_longer_than_the_started_servers_context(tmp_path, checkpoints):
    args = vllm_config(tmp_path, checkpoints=[checkpoints["plain"]], realign_lambdas=[1.0],
                       vllm_python=fake_python(tmp_path), vllm_server_args="--max-model-len 10", max_new_tokens=8)
    fix = r"max_model_len 10: .*--vllm_server_args \"--max-model-len 12\""
    with pytest.raises(ValueError, match=r"\(4 tokens\) \+ max_new_tokens 8 = 12 tokens .*" + fix) as error:
        evaluate(args)
    assert "\n" not in str(error.value)
    assert [r for r in logged_requests(os.path.join(args.output_dir, "vllm_server_0.log")) if "n" in r] == []


def test_vllm_backend_refuses_what_it_cannot_serve(tmp_path, tokenizer, checkpoints):
    with pytest.raises(ValueError, match="exactly one of `vllm_base_url`"):
        vllm_config(tmp_path)
    with pytest.raises(ValueError, match="exactly one of `vllm_base_url`"):
        vllm_config(tmp_path, vllm_base_url="http://127.0.0.1:1", vllm_python="/usr/bin/python3")
    with pytest.raises(ValueError, match="apply to the vLLM backend only"):
        EvalConfig(vllm_base_url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="'transformers' or 'vllm'"):
        EvalConfig(backend="sglang")
    url = "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="DeRa pairs run on the transformers backend only"):
        evaluate(vllm_config(tmp_path, model_name_or_path=checkpoints["inra"],
                             ref_model_name_or_path=checkpoints["plain"], vllm_base_url=url))  # fmt: skip
    with pytest.raises(ValueError, match="serves checkpoints from paths"):
        evaluate(vllm_config(tmp_path, vllm_base_url=url, realign_lambdas=[1.0]), checkpoints=[tiny_causal_lm()],
                 tokenizer=tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="A vLLM server serves one model"):
        evaluate(vllm_config(tmp_path, checkpoints=[checkpoints["plain"]] * 2, realign_lambdas=[0, 1],
                             vllm_base_url=url))  # fmt: skip


def test_eval_cli_runs_on_a_started_server(tmp_path, checkpoints, capsys):
    from trl_realign.cli.eval import run

    output_dir = str(tmp_path / "cli")
    run(["--checkpoints", checkpoints["plain"], "--realign_lambdas", "2.0", "--dataset_name", ARITHMETIC,
         "--prompt_column", "question", "--prompt_template", "{prompt}", "--use_chat_template", "false",
         "--max_new_tokens", "4", "--num_samples", "2", "--scorer", "exact_match", "--disable_tqdm", "true",
         "--backend", "vllm", "--vllm_python", fake_python(tmp_path), "--output_dir", output_dir,
         "--vllm_server_args", "--max-model-len 64 --enforce-eager"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "λ=2.0" in printed and f"written to {output_dir}" in printed
    (row,) = json.load(open(os.path.join(output_dir, "summary.json")))
    assert (row["model"], row["num_samples"]) == (checkpoints["plain"], 6)
    assert '"--max-model-len", "64", "--enforce-eager"' in open(os.path.join(output_dir, "vllm_server_0.log")).readline()


def test_eval_cli_parses_the_vllm_options(tmp_path):
    from trl_realign.cli.eval import make_parser

    (args,) = make_parser().parse_args_and_config(
        ["--model_name_or_path", "m", "--backend", "vllm", "--vllm_python", "/venv/bin/python",
         "--vllm_server_args", "--max-model-len 4096 --dtype float32", "--vllm_startup_timeout", "120"]
    )  # fmt: skip
    assert (args.backend, args.vllm_python, args.vllm_startup_timeout) == ("vllm", "/venv/bin/python", 120.0)
    assert args.vllm_server_args == "--max-model-len 4096 --dtype float32"
