"""Ask a running vLLM server (with the trl-realign-vllm plugin) for two completions with different λ.

Start the server in the vLLM environment (see vllm_plugin/README.md, "Serving with vLLM"), e.g.

    python -m vllm.entrypoints.openai.api_server --model ./my-inra-checkpoint \
        --hf-overrides '{"architectures": ["InRaQwen2ForCausalLM"]}' --host 127.0.0.1 --port 8000

then, with the `openai` client installed (vLLM's environment has it):

    python examples/vllm_inra_client.py --base-url http://127.0.0.1:8000/v1 --model ./my-inra-checkpoint

λ travels in `vllm_xargs`; λ = 0 is the original model, 1 the adapter-aligned one, values in between (or outside
[0, 1]) mix their logits. The two requests are in flight together, so the server batches them.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI


def complete(client: OpenAI, model: str, prompt: str, realign_lambda: float, max_tokens: int) -> str:
    response = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body={"vllm_xargs": {"realign_lambda": realign_lambda}},
    )
    return response.choices[0].text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="the served model name (by default, the --model path)")
    parser.add_argument("--prompt", default="Tell me about the sea.")
    parser.add_argument("--lambdas", type=float, nargs=2, default=(0.0, 1.0))
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=300, max_retries=0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts = list(pool.map(lambda lam: complete(client, args.model, args.prompt, lam, args.max_tokens), args.lambdas))
    for lam, text in zip(args.lambdas, texts):
        print(f"λ={lam:g}: {text!r}")


if __name__ == "__main__":
    main()
