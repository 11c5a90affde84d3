"""The vLLM backend of `evaluate` against a fake OpenAI-compatible server (no vLLM needed; see fake_vllm_server.py)."""

import json
import os
import stat
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
from trl_realign.evaluation.vllm_server import VLLMServer, VLLMServerError, inra_server_args
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
            "return_token_ids": True, "seed": 100 + k, "vllm_xargs": {"realign_lambda": lam},
        }  # fmt: skip
    for k, (prompt, lam) in enumerate(zip(prompts, [0.0, 0.5, 1.5])):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert len(results[k]) == 3
        for sample, completion in enumerate(results[k]):  # in sample order, although the server sent them reversed
            text, num_tokens, finished = expected(tokenizer, ids, lam, sample, 100 + k, 5)
            assert (completion.text, completion.num_tokens, completion.finished) == (text, num_tokens, finished)
    assert {c.finished for samples in results for c in samples} == {True, False}  # both endings are exercised


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
            backend(["1+1=", "2+2="], [0.25, 0.25], SamplingSettings(max_new_tokens=4100), 1)
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


def test_served_model_and_the_plugin_check():
    with FakeVLLMServer(model="/ckpt/inra") as server:
        assert served_model(server.base_url, "/ckpt/inra") == "/ckpt/inra"
        assert served_model(server.base_url, "./elsewhere") == "/ckpt/inra"  # the server's only model
        check_server_takes_lambda(server.base_url, "/ckpt/inra")
    with FakeVLLMServer(plugin=False) as server:
        with pytest.raises(VLLMRequestError, match="without the trl-realign-vllm plugin"):
            check_server_takes_lambda(server.base_url, "fake-model")


# ---------------------------------------------------------------------------------------------------- the launcher


def test_inra_server_args_route_to_the_plugin_class():
    config = tiny_config("qwen2")
    config.architectures = ["Qwen2ForCausalLM"]
    assert inra_server_args(config, 2) == [
        "--hf-overrides", json.dumps({"architectures": ["InRaQwen2ForCausalLM"], "layer_adapter": {"num_adapters": 2}})
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no `layer_adapter` marker: give `num_adapters`"):
        inra_server_args(config, None)
    config.layer_adapter = {"num_adapters": 1}
    assert json.loads(inra_server_args(config, None)[1]) == {"architectures": ["InRaQwen2ForCausalLM"]}
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        inra_server_args(config, 1)


def test_launch_args_add_the_inra_routing_and_dtype_unless_given(checkpoints):
    from trl_realign.evaluation.vllm_session import launch_args

    args = launch_args(checkpoints["inra"], "--max-model-len 64", inra=True, num_adapters=None, dtype="float32")
    assert args == ["--max-model-len", "64", "--hf-overrides", '{"architectures": ["InRaQwen2ForCausalLM"]}',
                    "--dtype", "float32"]  # fmt: skip
    mine = "--hf-overrides '{\"architectures\": [\"InRaQwen2ForCausalLM\"], \"x\": 1}' --dtype=bfloat16"
    assert launch_args(checkpoints["inra"], mine, inra=True, num_adapters=None, dtype="float32") == [
        "--hf-overrides", '{"architectures": ["InRaQwen2ForCausalLM"], "x": 1}', "--dtype=bfloat16"
    ]  # fmt: skip
    assert launch_args(checkpoints["plain"], None, inra=False, num_adapters=None, dtype="auto") == []


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
    paths = {"inra": str(root / "inra"), "plain": str(root / "plain")}
    inra.save_pretrained(paths["inra"])
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
