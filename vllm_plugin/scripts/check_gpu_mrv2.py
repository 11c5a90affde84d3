"""
The GPU check for Model Runner V2, vLLM 0.32 to 0.34 (the project's CPU machines cannot run it: MRV2 needs Triton and
a GPU). On a CUDA machine with the GPU wheel (`pip install 'vllm>=0.32,<0.35'`) and this plugin installed:

    python vllm_plugin/scripts/make_reference.py /tmp/ref        # main environment (trl-realign), any machine
    python vllm_plugin/scripts/check_gpu_mrv2.py /tmp/ref/reference.json   # the GPU machine's vLLM environment

It serves each family's 30 mixed-λ requests (fp32, greedy) with Model Runner V2 and full CUDA graphs for decode
(captured once, replayed with each step's λ, which reaches the forward through `RealignLambdaModelState`) and compares
the tokens with the main package's `InRaForCausalLM.generate`, exactly (fp32 on both sides). A family whose graph run
differs is rerun eagerly, so that a mismatch only graphs show is told apart. Then:
- the OpenAI server (127.0.0.1, full CUDA graphs): six requests with different λ against the reference, a string λ and
  an infinite one answered with HTTP 400, and one more request served after them;
- with two or more GPUs: tensor parallel 2 with batch-sharded sampling (vLLM then calls `compute_logits_local`, not
  `compute_logits`), which must equal the reference too.
Full CUDA graphs are refused on Model Runner V1 (`checks.py`), so a graph run that serves at all ran on V2.

Prints one JSON object; exits 1 on any mismatch or failure. `--dry-run` (any machine, CPU included) checks the
reference, the installed vLLM against the plugin's range, that the plugin's MRV2 pieces import, and the engine and
server arguments, then prints the plan without starting an engine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


ENGINE_ARGS = dict(
    dtype="float32", max_model_len=256, enable_prefix_caching=True, enable_chunked_prefill=True,
    max_num_batched_tokens=32, max_num_seqs=8, gpu_memory_utilization=0.3, seed=0,
)
MODES = {
    "full_cuda_graphs": dict(compilation_config={"cudagraph_mode": "FULL_DECODE_ONLY"}),
    "eager": dict(enforce_eager=True),
}
# Llama has `compute_logits_local` on every supported vLLM (Qwen3 from 0.34 only), so batch sharding really happens
TP_FAMILY = "llama"
TP_ARGS = dict(tensor_parallel_size=2, enable_batch_sharded_sampling=True, **MODES["full_cuda_graphs"])
SERVER_FAMILY = "qwen3"
BAD_LAMBDAS = {"string": ("high", "must be a number"), "inf": (float("inf"), "must be finite")}
SERVER_STARTUP_S = 900


def requests_of(reference: dict, family: str) -> list[tuple[float, int]]:
    prompts = reference["families"][family]["prompts"]
    return [(lam, i) for i in range(len(prompts)) for lam in reference["lambdas"]]


def engine_kwargs(spec: dict, extra: dict) -> dict:
    return dict(
        model=spec["paths"]["inra"], hf_overrides={"architectures": ["InRa" + spec["architecture"]]},
        **ENGINE_ARGS, **extra,
    )


def server_command(spec: dict, port: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec["paths"]["inra"],
        "--hf-overrides", json.dumps({"architectures": ["InRa" + spec["architecture"]]}),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", ENGINE_ARGS["dtype"], "--seed", "0",
        "--max-model-len", str(ENGINE_ARGS["max_model_len"]), "--enable-prefix-caching", "--enable-chunked-prefill",
        "--max-num-batched-tokens", str(ENGINE_ARGS["max_num_batched_tokens"]),
        "--max-num-seqs", str(ENGINE_ARGS["max_num_seqs"]),
        "--gpu-memory-utilization", str(ENGINE_ARGS["gpu_memory_utilization"]),
        "--compilation-config", json.dumps(MODES["full_cuda_graphs"]["compilation_config"]),
    ]


def run_batch(reference: dict, family: str, extra: dict) -> dict:
    """The family's mixed-λ batch on one engine: the (λ, prompt) pairs whose tokens differ from the reference."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = reference["families"][family]
    requests = requests_of(reference, family)
    start = time.monotonic()
    llm = LLM(**engine_kwargs(spec, extra))
    try:
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=spec["prompts"][i]) for _, i in requests],
            [SamplingParams(temperature=0.0, max_tokens=reference["new_tokens"], ignore_eos=True,
                            extra_args={"realign_lambda": lam}) for lam, _ in requests],
            use_tqdm=False,
        )
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    mismatches = [
        [lam, i] for (lam, i), out in zip(requests, outputs)
        if list(out.outputs[0].token_ids) != spec["tokens"][str(lam)][i]
    ]
    return {"requests": len(requests), "mismatches": mismatches, "seconds": round(time.monotonic() - start, 1)}


def post(url: str, body: dict) -> tuple[int, str]:
    # `1e999` is valid JSON that parses to inf (Python would write the non-JSON `Infinity`)
    data = json.dumps(body).replace("Infinity", "1e999").encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def check_server(reference: dict, log_path: str) -> dict:
    spec = reference["families"][SERVER_FAMILY]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "TRL_REALIGN_DEFAULT_LAMBDA"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(server_command(spec, port), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_STARTUP_S
        while True:
            if process.poll() is not None:
                return {"ok": False, "error": f"the server exited with {process.returncode}; see {log_path}"}
            try:
                with urllib.request.urlopen(base + "/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    return {"ok": False, "error": f"the server did not start in {SERVER_STARTUP_S} s; see {log_path}"}
                time.sleep(2)

        def complete(lam, prompt_index: int = 0) -> tuple[int, str]:
            return post(base + "/v1/completions", {
                "model": spec["paths"]["inra"], "prompt": spec["prompts"][prompt_index],
                "max_tokens": reference["new_tokens"], "temperature": 0.0, "ignore_eos": True,
                "return_token_ids": True, "vllm_xargs": {"realign_lambda": lam},
            })

        def matches(answer: tuple[int, str], lam, prompt_index: int = 0) -> bool:
            status, text = answer
            tokens = json.loads(text)["choices"][0]["token_ids"] if status == 200 else None
            return tokens == spec["tokens"][str(lam)][prompt_index]

        mismatches = [lam for lam in reference["lambdas"] if not matches(complete(lam), lam)]
        result = {"mismatches": mismatches, "refusals": {}}
        for name, (value, message) in BAD_LAMBDAS.items():
            status, text = complete(value)
            result["refusals"][name] = {"status": status, "names_the_problem": message in text}
        result["serves_after_refusals"] = matches(complete(1.5, 1), 1.5, 1)
        result["ok"] = (
            not result["mismatches"] and result["serves_after_refusals"]
            and all(r["status"] == 400 and r["names_the_problem"] for r in result["refusals"].values())
        )
        return result
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        process.kill()  # does nothing to a server that has exited
        process.wait()


def environment() -> dict:
    """What serves: the vLLM version (checked against the plugin's range, as registration does) and the GPUs."""
    import torch
    import vllm

    from trl_realign_vllm.plugin import check_vllm_version

    check_vllm_version(vllm.__version__)
    # The plugin's MRV2 pieces: the model state class and the V2 logits-processor interface it admits λ through
    from trl_realign_vllm.lambda_processor import RealignLambdaProcessor
    from trl_realign_vllm.model_state import RealignLambdaModelState  # noqa: F401
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor

    assert issubclass(RealignLambdaProcessor, LogitsProcessor)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "vllm": vllm.__version__, "torch": torch.__version__, "gpus": gpus,
        "device": torch.cuda.get_device_name(0) if gpus else "cpu",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="reference.json written by scripts/make_reference.py")
    parser.add_argument("--dry-run", action="store_true", help="check the setup and print the plan; start no engine")
    parser.add_argument("--log-dir", default=".", help="where the OpenAI server's log goes")
    args = parser.parse_args()
    # vLLM 0.32 and 0.33 fall back to V1 where V2 lacks a feature; 0.34 has only V2 (and refuses any other value)
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"

    with open(args.reference) as f:
        reference = json.load(f)
    for family, spec in reference["families"].items():
        missing = [(lam, i) for lam, i in requests_of(reference, family) if len(spec["tokens"][str(lam)]) <= i]
        if missing or not os.path.isfile(os.path.join(spec["paths"]["inra"], "config.json")):
            raise SystemExit(f"{args.reference}: family {family} lacks its checkpoint or tokens; rebuild it.")
    report = {**environment(), "dry_run": args.dry_run, "runs": {}}
    tp2 = report["gpus"] >= 2
    if args.dry_run:
        from vllm.engine.arg_utils import EngineArgs

        # The engine arguments must exist in this vLLM (a renamed one would fail only on the GPU otherwise)
        for extra in (*MODES.values(), TP_ARGS):
            EngineArgs(**engine_kwargs(reference["families"][TP_FAMILY], extra))
        report["plan"] = {
            "batches": [f"{family}/full_cuda_graphs (eager if it differs)" for family in reference["families"]]
            + [f"{TP_FAMILY}/tp2_batch_sharded (two GPUs or more)"],
            "server": " ".join(server_command(reference["families"][SERVER_FAMILY], 8000)),
        }
        print(json.dumps({"ok": True, **report}))
        return 0

    ok = True
    for family in reference["families"]:
        run = report["runs"][f"{family}/full_cuda_graphs"] = run_batch(reference, family, MODES["full_cuda_graphs"])
        if run["mismatches"]:
            ok = False
            report["runs"][f"{family}/eager"] = run_batch(reference, family, MODES["eager"])
    if tp2:
        run = report["runs"][f"{TP_FAMILY}/tp2_batch_sharded"] = run_batch(reference, TP_FAMILY, TP_ARGS)
        ok &= not run["mismatches"]
    else:
        report["runs"][f"{TP_FAMILY}/tp2_batch_sharded"] = "not run: one GPU"
    report["server"] = check_server(reference, os.path.join(args.log_dir, "check_gpu_mrv2_server.log"))
    ok &= report["server"]["ok"]
    print(json.dumps({"ok": ok, **report}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
