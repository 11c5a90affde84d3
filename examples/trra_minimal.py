"""A minimal TrRa training script that runs offline on CPU in seconds.

It builds two tiny random models in place of A and B, so the numbers mean nothing; swap in real checkpoints
(e.g. "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" as A, "agentica-org/DeepScaleR-1.5B-Preview" as B) and a real
dataset for a real run.

    python examples/trra_minimal.py
"""

from datasets import Dataset

from trl_realign import TrRaConfig, TrRaTrainer
from trl_realign.data import build_char_tokenizer
from trl_realign.testing import tiny_causal_lm


tokenizer = build_char_tokenizer()
model_a = tiny_causal_lm("qwen2", seed=0, vocab_size=len(tokenizer))  # reference A (the student starts here)
model_b = tiny_causal_lm("qwen2", seed=1, vocab_size=len(tokenizer))  # aligned B
train_dataset = Dataset.from_list(
    [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(10) for b in range(10)]
)

args = TrRaConfig(
    output_dir="outputs/trra-minimal",
    realign_lambda=2.0,  # teacher = softmax(2·z_B − z_A): extrapolate beyond B
    divergence="reverse_kl",
    per_device_train_batch_size=8,
    max_steps=20,
    learning_rate=1e-3,
    logging_steps=5,
    use_cpu=True,
    bf16=False,
    report_to=[],
)
trainer = TrRaTrainer(
    model=model_a, aligned_model=model_b, args=args, train_dataset=train_dataset, processing_class=tokenizer
)
trainer.train()
trainer.save_model(args.output_dir)
print(f"saved to {args.output_dir}; logged: {trainer.state.log_history[-2]}")
