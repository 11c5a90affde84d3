"""The OpenAI-compatible server (127.0.0.1, one engine): λ through `vllm_xargs`, concurrent requests, HTTP 400."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ENGINE_ARGS, expected_tokens, requests_of


FAMILY = "qwen3"
LAUNCH_DEFAULT = 0.25  # the server's default λ, set at launch
STARTUP_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    # Python writes inf as `Infinity`, which is not JSON; `1e999` is valid JSON that parses to inf
    data = json.dumps(body).replace("Infinity", "1e999").encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture(scope="module")
def server(reference, tmp_path_factory):
    spec = reference["families"][FAMILY]
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec["paths"]["inra"],
        "--hf-overrides", json.dumps({"architectures": ["InRa" + spec["architecture"]]}),
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", ENGINE_ARGS["dtype"], "--enforce-eager", "--seed", "0",
        "--max-model-len", str(ENGINE_ARGS["max_model_len"]), "--block-size", str(ENGINE_ARGS["block_size"]),
        "--enable-prefix-caching", "--enable-chunked-prefill",
        "--max-num-batched-tokens", str(ENGINE_ARGS["max_num_batched_tokens"]),
        "--max-num-seqs", str(ENGINE_ARGS["max_num_seqs"]),
    ]
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "TRL_REALIGN_DEFAULT_LAMBDA": str(LAUNCH_DEFAULT)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"The server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"The server did not start in {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
                time.sleep(2)
        yield base, spec
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def completion(base: str, spec: dict, prompt: list[int], new_tokens: int, xargs: dict | None) -> tuple[int, dict]:
    body = {
        "model": spec["paths"]["inra"], "prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0,
        "ignore_eos": True, "return_token_ids": True,
    }
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return post(base + "/v1/completions", body)


def test_concurrent_mixed_lambda_requests_match_transformers(server, reference):
    base, spec = server
    requests = requests_of(reference, FAMILY)
    # λ omitted on the last prompt's requests of λ = 0.25: the launch default must give the same tokens
    jobs = [(None if lam == LAUNCH_DEFAULT and i == len(spec["prompts"]) - 1 else {"realign_lambda": lam}, i)
            for lam, i in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(
            lambda job: completion(base, spec, spec["prompts"][job[1]], reference["new_tokens"], job[0]), jobs
        ))
    assert [status for status, _ in answers] == [200] * len(jobs)
    got = [answer["choices"][0]["token_ids"] for _, answer in answers]
    assert got == expected_tokens(reference, FAMILY)


@pytest.mark.parametrize(
    "xargs, message",
    [({"realign_lambda": "high"}, "must be a number"), ({"realign_lambda": 1e999}, "must be finite")],
    ids=["string", "inf"],
)
def test_bad_lambda_gets_400_and_server_keeps_serving(server, reference, xargs, message):
    base, spec = server
    status, answer = completion(base, spec, spec["prompts"][0], 4, xargs)
    assert status == 400, answer
    assert message in json.dumps(answer)
    status, answer = completion(base, spec, spec["prompts"][0], reference["new_tokens"], {"realign_lambda": 1.5})
    assert status == 200
    assert answer["choices"][0]["token_ids"] == reference["families"][FAMILY]["tokens"]["1.5"][0]


def test_client_example_sends_two_lambdas(server):
    base, spec = server
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "vllm_inra_client.py")
    result = subprocess.run(
        [sys.executable, example, "--base-url", base + "/v1", "--model", spec["paths"]["inra"], "--max-tokens", "8"],
        capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["λ=0", "λ=1"], result.stdout
