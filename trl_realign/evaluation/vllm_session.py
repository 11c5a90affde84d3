"""One checkpoint's vLLM backend for the λ sweep: its tokenizer, its EOS ids and a server (given, or started here)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex

from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from ..modeling.adapter import RESIDUAL_WRITERS, num_layer_adapters
from .generation import eos_token_ids_of
from .vllm_backend import VLLMBackend, check_server_takes_lambda, served_model
from .vllm_server import VLLMServer, inra_overrides


def checkpoint_eos_token_ids(path: str, tokenizer) -> list[int]:
    """The EOS ids a model loaded from `path` stops at (its generation config, else its config) and the tokenizer's."""
    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: transformers derives one from the config
        generation_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
    return eos_token_ids_of(generation_config, tokenizer)


def _option(arg: str) -> str | None:
    # vLLM's parser reads `--max_model_len` as `--max-model-len`
    return arg.split("=")[0].replace("_", "-") if arg.startswith("--") else None


def merge_hf_overrides(args: list[str], routing: dict) -> list[str]:
    """`args` with `routing` merged into their `--hf-overrides` JSON object (added when there is none)."""
    at = [i for i, arg in enumerate(args) if _option(arg) == "--hf-overrides"]
    dotted = [arg for arg in args if (_option(arg) or "").startswith("--hf-overrides.")]
    if dotted or len(at) > 1:
        raise ValueError(
            "Give the server's `--hf-overrides` once, as one JSON object (the InRa routing is merged into it), not "
            f"as {dotted or [args[i] for i in at]}."
        )
    if not at:
        return [*args, "--hf-overrides", json.dumps(routing)]
    i = at[0]
    raw, end = (args[i].split("=", 1)[1], i + 1) if "=" in args[i] else (" ".join(args[i + 1 : i + 2]), i + 2)
    try:
        mine = json.loads(raw)
    except ValueError:
        mine = None
    if not isinstance(mine, dict):
        raise ValueError(f"`--hf-overrides` must be a JSON object (the InRa routing is merged into it), got {raw!r}.")
    clashes = {key: mine[key] for key in routing if key in mine and mine[key] != routing[key]}
    if clashes:
        raise ValueError(
            f"The server arguments' `--hf-overrides` set {', '.join(f'`{key}`' for key in clashes)} to "
            f"{json.dumps(clashes)}, but this InRa checkpoint is served with {json.dumps(routing)}: drop them (the "
            "routing is added for you)."
        )
    return [*args[:i], "--hf-overrides", json.dumps({**mine, **routing}), *args[end:]]


def checkpoint_dtype(path: str) -> str | None:
    """The dtype a checkpoint's config names (`dtype`, or the older `torch_dtype`), as `--dtype` takes it."""
    dtype = getattr(AutoConfig.from_pretrained(path), "dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def launch_args(path: str, server_args: str | None, *, inra: bool, num_adapters: int | None, dtype: str) -> list[str]:
    """
    The user's server arguments, with the InRa routing merged into their `--hf-overrides`, and `--dtype` unless they
    set it: `dtype`, or for `"auto"` the checkpoint's own (vLLM's "auto" serves fp32 checkpoints in 16 bits, where the
    transformers backend loads them in fp32).
    """
    args = shlex.split(server_args or "")
    if inra:
        args = merge_hf_overrides(args, inra_overrides(AutoConfig.from_pretrained(path), num_adapters))
    if "--dtype" not in {_option(arg) for arg in args}:
        dtype = checkpoint_dtype(path) if dtype == "auto" else dtype
        args += [] if dtype is None else ["--dtype", dtype]
    return args


def adapter_is_identity(path: str, num_adapters: int | None) -> bool:
    """
    Whether the adapter layers of the checkpoint at `path` (its bottom `num_adapters`, else those its marker names)
    add nothing to the residual stream: every `o_proj` and `down_proj` zero, as the identity init leaves them. `False`
    when that cannot be read (no local safetensors files, or none of those weights).
    """
    count = num_adapters if num_adapters is not None else num_layer_adapters(AutoConfig.from_pretrained(path))
    writer = re.compile(rf"layers\.(\d+)\.\w+\.({'|'.join(RESIDUAL_WRITERS)})\.(weight|bias)$")
    found = set()
    for file in glob.glob(os.path.join(path, "*.safetensors")):
        with safe_open(file, framework="pt") as tensors:
            for key in tensors.keys():
                match = writer.search(key)
                if match and int(match.group(1)) < count:
                    if tensors.get_tensor(key).count_nonzero():
                        return False
                    found.add((int(match.group(1)), match.group(2)))
    return count > 0 and found == {(layer, name) for layer in range(count) for name in RESIDUAL_WRITERS}


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
            check_server_takes_lambda(
                base_url, model, adapter_is_identity=lambda: adapter_is_identity(path, num_adapters)
            )
        yield VLLMBackend(base_url, model, tokenizer, eos_ids, timeout=request_timeout, **backend_kwargs)
