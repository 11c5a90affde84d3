"""One checkpoint's vLLM backend for the λ sweep: its tokenizer, its EOS ids and a server (given, or started here)."""

from __future__ import annotations

import contextlib
import shlex

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from .generation import eos_token_ids_of
from .vllm_backend import VLLMBackend, check_server_takes_lambda, served_model
from .vllm_server import VLLMServer, inra_server_args


def checkpoint_eos_token_ids(path: str, tokenizer) -> list[int]:
    """The EOS ids a model loaded from `path` stops at (its generation config, else its config) and the tokenizer's."""
    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: transformers derives one from the config
        generation_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
    return eos_token_ids_of(generation_config, tokenizer)


def launch_args(path: str, server_args: str | None, *, inra: bool, num_adapters: int | None, dtype: str) -> list[str]:
    """The user's server arguments, plus the InRa routing and the dtype unless the user set them."""
    args = shlex.split(server_args or "")
    given = {arg.split("=")[0] for arg in args}
    if inra and "--hf-overrides" not in given:
        args += inra_server_args(AutoConfig.from_pretrained(path), num_adapters)
    if dtype != "auto" and "--dtype" not in given:
        args += ["--dtype", dtype]
    return args


@contextlib.contextmanager
def open_vllm_backend(
    path: str,
    tokenizer=None,
    *,
    inra: bool,
    num_adapters: int | None = None,
    base_url: str | None = None,
    python: str | None = None,
    server_args: str | None = None,
    dtype: str = "auto",
    log_path: str,
    startup_timeout: float = 600.0,
    request_timeout: float = 3600.0,
    **backend_kwargs,
):
    """
    Yield a [`VLLMBackend`] for the checkpoint at `path`: on the server at `base_url`, or on one started from
    `python` (the vLLM environment's interpreter) and stopped on exit. An InRa checkpoint (`inra=True`) is served
    through the trl-realign-vllm plugin, and the server is checked to read λ. `backend_kwargs` go to the backend.
    """
    if (base_url is None) == (python is None):
        raise ValueError("Give the vLLM backend either a running server's URL or the vLLM environment's python.")
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
    eos_ids = checkpoint_eos_token_ids(path, tokenizer)
    with contextlib.ExitStack() as stack:
        if base_url is None:
            args = launch_args(path, server_args, inra=inra, num_adapters=num_adapters, dtype=dtype)
            server = stack.enter_context(
                VLLMServer(python, path, args, log_path=log_path, startup_timeout=startup_timeout)
            )
            base_url = server.base_url
        model = served_model(base_url, path)
        if inra:
            check_server_takes_lambda(base_url, model)
        yield VLLMBackend(base_url, model, tokenizer, eos_ids, timeout=request_timeout, **backend_kwargs)
