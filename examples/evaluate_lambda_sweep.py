"""A λ sweep (the paper's Figure 4 in miniature) that runs offline on CPU in seconds.

It sweeps an InRa model (one batch holds several λ) and the DeRa baseline over the same two models, scores with exact
match and writes samples, summaries and the plot under `outputs/lambda-sweep-*`. The models are tiny and random, so the
numbers mean nothing; most of their completions run out of tokens before EOS, and a truncated completion scores 0
(`score_truncated=True` scores it anyway). For a real sweep, point it at real checkpoints and MATH-500, for instance:

    from trl_realign.evaluation import EvalConfig, evaluate

    evaluate(EvalConfig(
        model_name_or_path="agentica-org/DeepScaleR-1.5B-Preview",        # aligned model B
        ref_model_name_or_path="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",  # reference A: this pair is DeRa
        dataset_name="HuggingFaceH4/MATH-500",                               # columns problem/answer, split test
        realign_lambdas=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
        max_new_tokens=16384,                                                # the paper's limit
        dtype="bfloat16",
        output_dir="outputs/math500-dera",
        report_to=["wandb"],
    ))

(defaults: 8 samples per prompt, temperature 0.7, top-p 0.95, math-verify scoring). An InRa checkpoint needs only
`model_name_or_path` (add `num_adapters=1` for a plain L+1 checkpoint), and TrRa students go in `checkpoints` with one
λ label each in `realign_lambdas`.

    python examples/evaluate_lambda_sweep.py
"""

import torch
from datasets import Dataset

from trl_realign.data import build_char_tokenizer
from trl_realign.evaluation import EvalConfig, evaluate
from trl_realign.modeling.adapter import adapter_parameter_names, add_layer_adapter
from trl_realign.modeling.inra import InRaForCausalLM
from trl_realign.testing import tiny_causal_lm


tokenizer = build_char_tokenizer()
reference = tiny_causal_lm("qwen2", seed=0, vocab_size=len(tokenizer))  # A
expanded = add_layer_adapter(tiny_causal_lm("qwen2", seed=0, vocab_size=len(tokenizer)))  # A + adapter = B
adapter = set(adapter_parameter_names(expanded))
with torch.no_grad():  # stands in for adapter training: a zero (identity) adapter would make B equal to A
    for name, param in expanded.named_parameters():
        if name in adapter:
            param.add_(0.3 * torch.randn_like(param))
dataset = Dataset.from_list([{"problem": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(3)])

common = dict(
    realign_lambdas=[-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
    prompt_template="{prompt}",
    num_samples=4,
    max_new_tokens=16,
    scorer="exact_match",
)
inra_summary = evaluate(
    EvalConfig(output_dir="outputs/lambda-sweep-inra", **common),
    model=InRaForCausalLM.from_model(expanded),
    tokenizer=tokenizer,
    dataset=dataset,
)
dera_summary = evaluate(
    EvalConfig(output_dir="outputs/lambda-sweep-dera", **common),
    model=expanded,  # DeRa: the expanded model run as a plain model...
    ref_model=reference,  # ...mixed with the reference at every decoding step
    tokenizer=tokenizer,
    dataset=dataset,
)
for inra_row, dera_row in zip(inra_summary, dera_summary):
    print(
        f"λ={inra_row['realign_lambda']:+.2f}  InRa: acc {inra_row['accuracy']:.2f}, "
        f"truncated {inra_row['truncation_rate']:.2f}, {inra_row['mean_tokens']:.1f} tokens  |  DeRa: acc "
        f"{dera_row['accuracy']:.2f}, truncated {dera_row['truncation_rate']:.2f}, {dera_row['mean_tokens']:.1f} tokens"
    )
print("plots: outputs/lambda-sweep-inra/lambda_sweep.png, outputs/lambda-sweep-dera/lambda_sweep.png")
