"""Which vLLM model runner serves λ: Model Runner V1 exists up to vLLM 0.33; 0.34 removed it."""

from __future__ import annotations

from importlib.util import find_spec


# The V1 logits-processor API goes with Model Runner V1: vLLM 0.34 deleted both (`vllm.v1.sample` keeps only `ops`)
HAS_MODEL_RUNNER_V1 = find_spec("vllm.v1.sample.logits_processor") is not None


def uses_model_runner_v2(vllm_config) -> bool:
    """Whether this engine runs Model Runner V2 (always on vLLM 0.34, whose config has no `use_v2_model_runner`)."""
    return not HAS_MODEL_RUNNER_V1 or vllm_config.use_v2_model_runner
