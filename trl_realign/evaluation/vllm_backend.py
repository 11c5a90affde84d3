"""
The vLLM backend: a [`CompletionBackend`] that asks an OpenAI-compatible vLLM server for completions over HTTP.

One `/v1/completions` request per prompt, with `n = num_samples`; an InRa model's λ goes in `vllm_xargs`
(`{"realign_lambda": λ}`, read by the trl-realign-vllm plugin), a plain model's requests carry none. Prompts are sent
as token ids tokenized here, and completions come back as token ids decoded here, so that both backends see the same
tokens and count them by the same rule ([`count_generated_tokens`]); the server's `finish_reason` says whether a
completion was cut at `max_tokens`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import httpx
import torch

from ..modeling.realign_lambda import check_realign_lambda
from .completions import Completion, SamplingSettings, check_lambdas_per_prompt, count_generated_tokens


logger = logging.getLogger(__name__)
# The probe that shows λ reaching the model: ids every vocabulary has, fewer than a KV block (so the second probe
# cannot reuse the first one's cache), and the first token's top log-probabilities at λ=0 and λ=1
PROBE_PROMPT = [0, 1, 2, 3]
PROBE_LOGPROBS = 5
# Identical computations give identical log-probabilities; a trained adapter moves them by far more than this
PROBE_TOLERANCE = 1e-4

class VLLMRequestError(RuntimeError):
    """The vLLM server refused a request, could not be reached, or answered something unexpected."""


def normalize_base_url(base_url: str) -> str:
    """`http://host:port`, whether given with or without a trailing `/v1`."""
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"The vLLM server URL must start with http:// or https://, got {base_url!r}.")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)


def _send(client: httpx.Client, method: str, url: str, **kwargs) -> dict:
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise VLLMRequestError(f"The vLLM server did not answer {url} in time ({exc!r}).") from exc
    except httpx.HTTPError as exc:
        raise VLLMRequestError(
            f"Could not reach the vLLM server at {url} ({exc!r}). Is it running? Check the URL, or let `evaluate` "
            "start one (`vllm_python`)."
        ) from exc
    if response.status_code != 200:
        raise VLLMRequestError(
            f"The vLLM server refused {url} (HTTP {response.status_code}): {_error_message(response)}"
        )
    return response.json()


def _served_models(base_url: str, timeout: float) -> list[dict]:
    with httpx.Client(timeout=timeout) as client:
        return _send(client, "GET", normalize_base_url(base_url) + "/v1/models")["data"]


def served_model(base_url: str, wanted: str | None = None, timeout: float = 30.0) -> str:
    """The name to send as `model`: `wanted` if the server serves it, else the server's only model."""
    models = [entry["id"] for entry in _served_models(base_url, timeout)]
    if wanted in models:
        return wanted
    if len(models) == 1:
        return models[0]
    raise VLLMRequestError(
        f"The vLLM server at {base_url} serves {models}, and none is {wanted!r}: start it with that model (or "
        "`--served-model-name`)."
    )


def served_max_model_len(base_url: str, model: str, timeout: float = 30.0) -> int:
    """The context (prompt + completion tokens) the server gives `model`: vLLM's `/v1/models` reports it."""
    length = next((entry.get("max_model_len") for entry in _served_models(base_url, timeout) if entry["id"] == model),
                  None)  # fmt: skip
    if not isinstance(length, int):
        raise VLLMRequestError(
            f"The server at {base_url} reports no `max_model_len` for {model!r} in /v1/models: is it a vLLM server?"
        )
    return length


def completion_request(
    model: str,
    prompt_ids: list[int],
    realign_lambda: float | None,
    sampling: SamplingSettings,
    num_samples: int,
    eos_token_ids: Sequence[int],
    seed: int | None = None,
) -> dict:
    """The JSON body of one `/v1/completions` request: `num_samples` completions of one prompt at one λ."""
    body = {
        "model": model,
        "prompt": list(prompt_ids),
        "n": num_samples,
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,  # 0 disables top-k, as in `SamplingSettings`
        # The same EOS ids as the transformers backend (vLLM adds the tokenizer's and the generation config's)
        "stop_token_ids": list(eos_token_ids),
        "return_token_ids": True,
    }
    if seed is not None:
        body["seed"] = seed
    if realign_lambda is not None:
        body["vllm_xargs"] = {"realign_lambda": check_realign_lambda(realign_lambda)}  # a finite float, as JSON needs
    return body


def parse_completions(answer: dict, num_samples: int, eos_token_ids: Sequence[int], tokenizer) -> list[Completion]:
    """The `num_samples` choices of one answer, in sample order, counted by [`count_generated_tokens`]."""
    choices = sorted(answer.get("choices") or [], key=lambda choice: choice["index"])
    if len(choices) != num_samples or any(choice.get("token_ids") is None for choice in choices):
        raise VLLMRequestError(
            f"Expected {num_samples} choices with `token_ids` from the vLLM server, got {len(choices)}: is it vLLM "
            ">= 0.10 (the completions API's `return_token_ids`)?"
        )
    completions = []
    for choice in choices:
        ids = list(choice["token_ids"])
        if choice["finish_reason"] not in ("stop", "length"):
            raise VLLMRequestError(f"A completion ended with finish_reason={choice['finish_reason']!r}: {choice}")
        count, has_eos = count_generated_tokens(torch.tensor([ids], dtype=torch.long), eos_token_ids)
        finished = choice["finish_reason"] == "stop"
        if finished and not bool(has_eos):
            raise VLLMRequestError(
                f"The vLLM server stopped a completion without one of the EOS ids {list(eos_token_ids)} (a stop "
                "string or stop id given at launch?): its tokens cannot be counted by the evaluation's rule."
            )
        ids = ids[: int(count)]
        completions.append(Completion(tokenizer.decode(ids, skip_special_tokens=True), ids, finished))
    return completions


def _probe_logprobs(client: httpx.Client, url: str, model: str, realign_lambda: float) -> dict:
    body = {
        "model": model, "prompt": PROBE_PROMPT, "max_tokens": 1, "temperature": 0.0, "logprobs": PROBE_LOGPROBS,
        "return_tokens_as_token_ids": True, "vllm_xargs": {"realign_lambda": realign_lambda},
    }  # fmt: skip
    answer = _send(client, "POST", url, json=body)
    try:
        return dict(answer["choices"][0]["logprobs"]["top_logprobs"][0])
    except (KeyError, IndexError, TypeError) as exc:
        raise VLLMRequestError(
            f"The vLLM server at {url} answered a request for logprobs without them: {answer}"
        ) from exc


def check_server_takes_lambda(
    base_url: str, model: str, *, adapter_is_identity: Callable[[], bool], timeout: float = 60.0
) -> None:
    """
    Raise unless λ reaches the model. A server without the trl-realign-vllm plugin ignores `vllm_xargs` (the plugin
    refuses a non-numeric λ with HTTP 400); one with the plugin but without the InRa routing (`--hf-overrides`) serves
    vLLM's stock class, the λ=1 model, and validates λ all the same. So the first token's top log-probabilities at
    λ=0 and λ=1 must differ too. They cannot for an untrained adapter (the identity: both paths are the same model),
    where `adapter_is_identity()` is asked: then the routing cannot be shown, nor can it matter, and a warning says so.
    """
    url = normalize_base_url(base_url) + "/v1/completions"
    body = {"model": model, "prompt": [0], "max_tokens": 1, "vllm_xargs": {"realign_lambda": "not-a-number"}}
    with httpx.Client(timeout=timeout) as client:
        response = client.post(url, json=body)
        if response.status_code != 400 or "realign_lambda" not in response.text:
            raise VLLMRequestError(
                f"The vLLM server at {base_url} does not read `realign_lambda` (a non-numeric λ got HTTP "
                f"{response.status_code}, not 400): it runs without the trl-realign-vllm plugin, so every λ would "
                "give the same model. Install the plugin into the server's environment and serve the checkpoint with "
                "its `--hf-overrides` (README, 'Serving InRa with vLLM')."
            )
        at_0, at_1 = (_probe_logprobs(client, url, model, lam) for lam in (0.0, 1.0))
    if at_0.keys() != at_1.keys() or any(abs(at_0[t] - at_1[t]) > PROBE_TOLERANCE for t in at_0):
        return
    if adapter_is_identity():
        logger.warning(
            f"The vLLM server at {base_url} gives the same log-probabilities at λ=0 and λ=1, as it must: the "
            "checkpoint's adapter is the identity (untrained: its o_proj and down_proj are zero), so every λ is the "
            "same model and whether the server routes λ cannot be checked. Evaluating anyway."
        )
        return
    raise VLLMRequestError(
        f"The vLLM server at {base_url} gives the same log-probabilities at λ=0 and λ=1 (a probe's first token, top "
        f"{PROBE_LOGPROBS}), though the checkpoint's adapter is not the identity (or its local safetensors do not show "
        "it): it serves vLLM's stock class, the λ=1 model at every λ. Serve the checkpoint with the trl-realign-vllm "
        "plugin's `--hf-overrides` (e.g. "
        '\'{"architectures": ["InRaQwen2ForCausalLM"]}\', merged into any overrides of your own; README, \'Serving '
        "InRa with vLLM').")


@dataclass
class VLLMBackend:
    """
    A [`CompletionBackend`] over a running vLLM server.

    Args:
        base_url: the server, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is fine).
        model: the served model name (see [`served_model`]).
        tokenizer: the model's tokenizer, which tokenizes prompts and decodes completions here.
        eos_token_ids: the ids that end a completion (as the transformers backend's `resolve_eos_token_ids`).
        add_special_tokens: whether tokenizing adds BOS etc. (`False` for chat-templated prompts).
        max_concurrency: requests in flight at once (the server batches them).
        seed: request k of a call gets seed `seed + k * num_samples` (vLLM seeds its sample j with the request's seed
            + j), so that no two samples share a random stream and draws do not depend on how the server batches.
        max_model_len: the server's context (read from it when `None`): a call whose longest prompt plus
            `max_new_tokens` exceeds it is refused before any request, rather than cut short by vLLM.
        timeout: seconds one request may take.
        progress: a tqdm bar advanced by one per prompt.
    """

    base_url: str
    model: str
    tokenizer: object
    eos_token_ids: Sequence[int]
    add_special_tokens: bool = False
    max_concurrency: int = 8
    seed: int | None = None
    max_model_len: int | None = None
    timeout: float = 3600.0
    progress: object = None

    def __call__(self, prompts, realign_lambdas, sampling: SamplingSettings, num_samples: int):
        check_lambdas_per_prompt(prompts, realign_lambdas)
        if sampling.num_beams > 1:
            raise ValueError("Beam search is not available through the vLLM backend; use `num_beams=1`.")
        if sampling.greedy and num_samples > 1:
            raise ValueError(f"Greedy decoding gives one completion per prompt; got `num_samples={num_samples}`.")
        if not self.eos_token_ids:
            raise ValueError("The vLLM backend needs at least one EOS token id.")
        url = normalize_base_url(self.base_url) + "/v1/completions"
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        self._check_context(prompt_ids, sampling.max_new_tokens)
        bodies = [
            completion_request(
                self.model, ids, None if realign_lambdas is None else realign_lambdas[k], sampling, num_samples,
                self.eos_token_ids, None if self.seed is None else self.seed + k * num_samples,
            )  # fmt: skip
            for k, ids in enumerate(prompt_ids)
        ]
        results: list[list[Completion] | None] = [None] * len(bodies)
        client, pool = httpx.Client(timeout=self.timeout), ThreadPoolExecutor(self.max_concurrency)
        futures = {pool.submit(_send, client, "POST", url, json=body): k for k, body in enumerate(bodies)}
        try:
            for future in as_completed(futures):
                k = futures[future]
                try:
                    answer = future.result()
                except VLLMRequestError as exc:
                    lam = "" if realign_lambdas is None else f" at λ={realign_lambdas[k]}"
                    raise VLLMRequestError(f"Prompt {k}{lam}: {exc}") from exc
                results[k] = parse_completions(answer, num_samples, self.eos_token_ids, self.tokenizer)
                if self.progress is not None:
                    self.progress.update(1)
        except BaseException:
            # Raise now: requests not yet sent are dropped, and those in flight are not waited for (they end when
            # their answer comes, or when a server started for the sweep is stopped)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        client.close()
        return results

    def _check_context(self, prompt_ids: list[list[int]], max_new_tokens: int) -> None:
        # vLLM caps max_tokens at max_model_len - prompt length: such completions would end as `length`, truncated
        if self.max_model_len is None:
            self.max_model_len = served_max_model_len(self.base_url, self.model, timeout=min(self.timeout, 30.0))
        longest = max((len(ids) for ids in prompt_ids), default=0)
        if longest + max_new_tokens > self.max_model_len:
            need = longest + max_new_tokens
            raise ValueError(
                f"The longest prompt ({longest} tokens) + max_new_tokens {max_new_tokens} = {need} tokens exceed the "
                f"vLLM server's max_model_len {self.max_model_len}: give it a longer context (`--vllm_server_args "
                f'"--max-model-len {need}"` where `evaluate` starts it, `--max-model-len {need}` where you do) or use '
                "a smaller max_new_tokens."
            )
