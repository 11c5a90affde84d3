"""
The GPU check for Model Runner V2 (not run here: the project's machines have no GPU). On a CUDA machine with vLLM 0.32
(the GPU wheel, `vllm`) and this plugin installed:

    python vllm_plugin/scripts/make_reference.py /tmp/ref        # main environment (trl-realign), any machine
    python vllm_plugin/scripts/check_gpu_mrv2.py /tmp/ref/reference.json   # the GPU machine's vLLM environment

For every family it serves the mixed-λ batch with Model Runner V2 (`VLLM_USE_V2_MODEL_RUNNER=1`), λ reaching the
forward through `RealignLambdaModelState` as a tensor input, and full CUDA graphs for decode (captured once, replayed
with each step's λ), and compares the greedy tokens with the main package's `InRaForCausalLM.generate`. It also runs
the same batch eagerly, so a mismatch that only graphs show is told apart. Prints one JSON object; exits 1 on any
mismatch.
"""

from __future__ import annotations

import gc
import json
import os
import sys


def main(reference_file: str) -> int:
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(reference_file) as f:
        reference = json.load(f)
    modes = {
        "full_cuda_graphs": dict(compilation_config={"cudagraph_mode": "FULL_DECODE_ONLY"}),
        "eager": dict(enforce_eager=True),
    }
    report, ok = {}, True
    for family, spec in reference["families"].items():
        requests = [(lam, i) for i in range(len(spec["prompts"])) for lam in reference["lambdas"]]
        for mode, mode_args in modes.items():
            llm = LLM(
                model=spec["paths"]["inra"], hf_overrides={"architectures": ["InRa" + spec["architecture"]]},
                dtype="float32", max_model_len=256, enable_prefix_caching=True, enable_chunked_prefill=True,
                max_num_batched_tokens=32, max_num_seqs=8, gpu_memory_utilization=0.3, seed=0, **mode_args,
            )
            outputs = llm.generate(
                [TokensPrompt(prompt_token_ids=spec["prompts"][i]) for _, i in requests],
                [SamplingParams(temperature=0.0, max_tokens=reference["new_tokens"], ignore_eos=True,
                                extra_args={"realign_lambda": lam}) for lam, _ in requests],
                use_tqdm=False,
            )
            mismatches = [
                [lam, i] for (lam, i), out in zip(requests, outputs)
                if list(out.outputs[0].token_ids) != spec["tokens"][str(lam)][i]
            ]
            report[f"{family}/{mode}"] = {"requests": len(requests), "mismatches": mismatches}
            ok &= not mismatches
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
    print(json.dumps({"ok": ok, "runs": report}))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} REFERENCE_JSON")
    sys.exit(main(sys.argv[1]))
