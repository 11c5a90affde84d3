"""Supervised fine-tuning of a layer adapter only, offline on CPU in seconds.

A tiny random Qwen2 model stands in for the base model, so the numbers mean nothing; for a real run use e.g.
"Qwen/Qwen2.5-7B-Instruct" and a real dataset. The trainer inserts one identity-initialised copy of the bottom
decoder layer before the original layers and trains only that copy: the original layers stay bit-for-bit unchanged,
and the saved checkpoint (L+1 layers plus a `layer_adapter` marker in config.json) loads with plain transformers.
With `adapter_lora=True` the LoRA update is merged into the adapter layer before saving, so the output is the same kind
of plain checkpoint. `save_adapter` writes the adapter layer alone, which `InRaForCausalLM.from_base_and_adapter` puts
back on the base model.

    python examples/layer_adapter_sft.py
"""

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl_realign.data import build_char_tokenizer
from trl_realign.modeling import InRaForCausalLM, bypass_layer_adapter
from trl_realign.testing import tiny_causal_lm
from trl_realign.trainers import LayerAdapterSFTConfig, LayerAdapterSFTTrainer


tokenizer = build_char_tokenizer()
base = tiny_causal_lm("qwen2", vocab_size=len(tokenizer))
base_copy = tiny_causal_lm("qwen2", vocab_size=len(tokenizer))  # the same seeded weights: the base for the artifact
train_dataset = Dataset.from_list(
    [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(10) for b in range(10)]
)

args = LayerAdapterSFTConfig(
    output_dir="outputs/layer-adapter-sft",
    num_adapters=1,  # adapter layers inserted before the original ones
    adapter_init="identity",  # the expanded model starts exactly as the base model
    per_device_train_batch_size=8,
    max_steps=10,
    learning_rate=1e-3,
    logging_steps=5,
    use_cpu=True,
    bf16=False,
    report_to=[],
    save_strategy="no",
)
trainer = LayerAdapterSFTTrainer(base, args=args, train_dataset=train_dataset, processing_class=tokenizer)
trainer.train()
trainer.save_model(args.output_dir)
trainer.save_adapter(f"{args.output_dir}/layer_adapter")

model = AutoModelForCausalLM.from_pretrained(args.output_dir)  # plain transformers: L+1 layers
prompt = tokenizer("7+5=", return_tensors="pt")
with torch.no_grad():
    adapted = model(**prompt).logits[0, -1]
    with bypass_layer_adapter(model):  # the same weights without the adapter: the base model
        original = model(**prompt).logits[0, -1]
print(f"{model.config.num_hidden_layers} layers, marker {model.config.layer_adapter}")
print(f"next-token logits moved by the adapter: max |Δ| = {(adapted - original).abs().max():.4f}")
rebuilt = InRaForCausalLM.from_base_and_adapter(base_copy, f"{args.output_dir}/layer_adapter")
with torch.no_grad():
    same = torch.equal(rebuilt(**prompt).logits[0, -1], adapted)
print(f"base + adapter-only artifact gives the trained model's logits: {same}")
