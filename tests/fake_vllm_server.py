"""
A stand-in for vLLM's OpenAI-compatible server (`/health`, `/v1/models`, `/v1/completions` with `return_token_ids`),
for the vLLM backend's tests: in a thread (`FakeVLLMServer`) or as the server process of a fake vLLM interpreter
(`python fake_vllm_server.py -m vllm.entrypoints.openai.api_server --model M --port P`).

Completions are a deterministic function of (prompt ids, λ, sample index, seed): `FAKE_TOKENS` ids that end in the
first EOS id after `stop_after` tokens when the prompt's length is even, or run to `max_tokens` ("length") otherwise.
Like the trl-realign-vllm plugin, a non-numeric `realign_lambda` gets HTTP 400 (unless `plugin=False`). Like vLLM,
`/v1/models` reports `max_model_len`, a request's `max_tokens` is cut to fit it (a prompt that does not fit gets HTTP
400), and `logprobs: k` returns the first token's top-k log-probabilities, which depend on λ only where λ matters: a
model not routed to the plugin's InRa class (or an InRa model with an identity adapter) is one model, the λ=1 one,
whatever λ says (`lambda_matters=False`; as a process: no InRa `--hf-overrides`).
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


FIRST_TOKEN = 10
MAX_MODEL_LEN = 512  # the fake's context when `--max-model-len` is not given


def fake_tokens(prompt: list[int], realign_lambda: float | None, sample: int, seed: int | None, body: dict) -> tuple:
    lam = 0.0 if realign_lambda is None else realign_lambda
    base = FIRST_TOKEN + (sum(prompt) + 7 * sample + int(round(lam * 4)) + (seed or 0)) % 20
    ids = [FIRST_TOKEN + (base + step) % 20 for step in range(body["max_tokens"])]
    stop_after = 2
    if len(prompt) % 2 == 0 and body["max_tokens"] > stop_after:
        return ids[:stop_after] + [body["stop_token_ids"][0]], "stop"
    return ids, "length"


def fake_logprobs(prompt: list[int], realign_lambda: float | None, k: int) -> dict:
    """The completions API's `logprobs` of a first token: its top-k, a function of the prompt and of λ."""
    lam = 0.0 if realign_lambda is None else realign_lambda
    top = {f"token_id:{FIRST_TOKEN + i}": -1.0 - i - 0.01 * lam - 0.001 * sum(prompt) for i in range(k)}
    token = next(iter(top))
    return {"tokens": [token], "token_logprobs": [top[token]], "top_logprobs": [top], "text_offset": [0]}


class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._reply(200, {})
        elif self.path == "/v1/models":
            model = {"id": self.server.model, "object": "model", "max_model_len": self.server.max_model_len}
            self._reply(200, {"object": "list", "data": [model]})
        else:
            self._reply(404, {"error": {"message": f"no route {self.path}", "code": 404}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:  # one request's line at a time: handlers run in threads
            self.server.requests.append(body)
            if self.server.echo:  # as a process, its log is how a test sees the requests
                print("REQUEST " + json.dumps(body), flush=True)
        if self.path != "/v1/completions":
            return self._reply(404, {"error": {"message": f"no route {self.path}", "code": 404}})
        if body.get("model") != self.server.model:
            message = f"The model `{body.get('model')}` does not exist."
            return self._reply(404, {"error": {"message": message, "code": 404}})
        lam = (body.get("vllm_xargs") or {}).get("realign_lambda")
        if self.server.plugin and lam is not None and not isinstance(lam, (int, float)):
            message = f"realign_lambda must be a number, got {lam!r}"
            return self._reply(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
        if not isinstance(lam, (int, float)):  # without the plugin, vLLM ignores vllm_xargs
            lam = None
        if self.server.hook is not None and (reply := self.server.hook(body)) is not None:
            return self._reply(*reply)
        if lam is not None and not self.server.lambda_matters:  # the stock class: one path, i.e. the λ=1 model
            lam = 1.0
        if len(body["prompt"]) >= self.server.max_model_len:
            message = f"This model's maximum context length is {self.server.max_model_len} tokens."
            return self._reply(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
        # vLLM's silent cap, which the evaluation must never reach
        body = dict(body, max_tokens=min(body["max_tokens"], self.server.max_model_len - len(body["prompt"])))
        if self.server.fail_with is not None:
            status, message = self.server.fail_with
            return self._reply(status, {"error": {"message": message, "type": "BadRequestError", "code": status}})
        choices = []
        for sample in range(body.get("n", 1)):
            ids, reason = fake_tokens(body["prompt"], lam, sample, body.get("seed"), body)
            choice = {"index": sample, "text": "(ignored)", "token_ids": ids, "finish_reason": reason}
            if body.get("logprobs") is not None:
                choice["logprobs"] = fake_logprobs(body["prompt"], lam, body["logprobs"])
            choices.append(choice)
        self._reply(200, {"object": "text_completion", "model": self.server.model, "choices": choices[::-1]})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True


class FakeVLLMServer:
    """The fake server on 127.0.0.1 in a background thread; `requests` holds the JSON bodies it received."""

    def __init__(self, model: str = "fake-model", plugin: bool = True, fail_with: tuple[int, str] | None = None,
                 hook=None, lambda_matters: bool = True, max_model_len: int = MAX_MODEL_LEN):  # fmt: skip
        """`hook(body)` may answer a completion request itself with `(status, payload)` (or None: the usual answer)."""
        self.httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.model, self.httpd.plugin, self.httpd.fail_with, self.httpd.hook = model, plugin, fail_with, hook
        self.httpd.lambda_matters, self.httpd.max_model_len = lambda_matters, max_model_len
        self.httpd.requests, self.httpd.lock, self.httpd.echo = [], threading.Lock(), False
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    def completion_requests(self) -> list[dict]:
        return [r for r in self.requests if "n" in r]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m")
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, rest = parser.parse_known_args()
    print(f"fake vLLM server for {args.model}, extra args {json.dumps(rest)}", flush=True)
    known = argparse.ArgumentParser()
    known.add_argument("--hf-overrides", type=json.loads, default={})
    known.add_argument("--max-model-len", type=int, default=MAX_MODEL_LEN)
    served = known.parse_known_args(rest)[0]
    httpd = _HTTPServer((args.host, args.port), _Handler)
    httpd.model, httpd.plugin, httpd.fail_with, httpd.hook = args.model, "--no-plugin" not in rest, None, None
    httpd.max_model_len = served.max_model_len
    # As vLLM: the plugin's class (the one where λ matters) only where the overrides route the checkpoint to it
    httpd.lambda_matters = any(arch.startswith("InRa") for arch in served.hf_overrides.get("architectures", []))
    httpd.requests, httpd.lock, httpd.echo = [], threading.Lock(), True
    httpd.serve_forever()


if __name__ == "__main__":
    main()
