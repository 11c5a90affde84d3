"""`trl-realign sft` and `trl-realign dpo`: training of the layer adapter only, from a recipe or flags."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterTrainingCommand:
    """One adapter-training subcommand: its `*Config` and `*Trainer` (by name in `trl_realign.trainers`)."""

    name: str
    description: str
    config: str
    trainer: str

    def _trainers_attr(self, attr: str):
        return getattr(importlib.import_module("..trainers", __package__), attr)

    def make_parser(self, prog: str | None = None):
        from trl import ModelConfig, ScriptArguments, TrlParser

        from ..data.prepare import DatasetPreparationArguments
        from .launch import LAUNCHER_EPILOG

        dataclass_types = (ScriptArguments, self._trainers_attr(self.config), ModelConfig, DatasetPreparationArguments)
        return TrlParser(dataclass_types, prog=prog, description=self.description, epilog=LAUNCHER_EPILOG)

    def check(self, script_args, training_args, model_args, preparation_args) -> None:
        from .parsing import check_models_and_data
        from .training import check_no_model_lora

        check_models_and_data(self.name, script_args, model_args)
        check_no_model_lora(model_args, self.name)

    def main(self, script_args, training_args, model_args, preparation_args) -> None:
        from ..modeling.adapter import get_layer_adapter_config
        from ..modeling.adapter_artifact import ADAPTER_SUBFOLDER
        from ..modeling.model_parts import decoder_of
        from .training import check_expanded_under_zero3, load_training_data, set_model_init_kwargs

        check_expanded_under_zero3(model_args.model_name_or_path, self.name)
        set_model_init_kwargs(training_args, model_args)
        train_dataset, eval_dataset = load_training_data(
            self.name, script_args, preparation_args, training_args, model_args.model_name_or_path
        )
        trainer = self._trainers_attr(self.trainer)(
            model=model_args.model_name_or_path, args=training_args, train_dataset=train_dataset,
            eval_dataset=eval_dataset,
        )
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        output_dir = training_args.output_dir
        trainer.save_model(output_dir)
        adapter_dir = os.path.join(output_dir, ADAPTER_SUBFOLDER)
        trainer.save_adapter(adapter_dir)
        marker = get_layer_adapter_config(decoder_of(trainer.model).config)
        merged = " (LoRA merged into the adapter layers)" if training_args.adapter_lora else ""
        trainer.accelerator.print(
            f"Saved the expanded model, {marker['num_adapters']} adapter layer(s) + {marker['base_num_hidden_layers']} "
            f"original layers{merged}, to {output_dir}; the adapter-only artifact to {adapter_dir}."
        )

    def run(self, argv: list[str]) -> None:
        from .training import run_training_command

        run_training_command(self.name, self.make_parser(f"trl-realign {self.name}"), argv, self.check, self.main)


SFT = AdapterTrainingCommand(
    "sft",
    "`trl-realign sft`: supervised fine-tuning of the layer adapter only (InRa training, paper §3.2 and §4.2).",
    "LayerAdapterSFTConfig",
    "LayerAdapterSFTTrainer",
)
DPO = AdapterTrainingCommand(
    "dpo",
    "`trl-realign dpo`: DPO of the layer adapter only (paper §4.3); the reference is the model, adapter bypassed.",
    "LayerAdapterDPOConfig",
    "LayerAdapterDPOTrainer",
)
