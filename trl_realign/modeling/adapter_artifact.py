"""
The adapter-only artifact: the adapter layers' weights and what they need from their base model, with a format version.

A folder (or a hub repository) holding `layer_adapter_config.json` (the fields of [`LayerAdapterArtifact`]) and
`layer_adapter.safetensors` (the adapter layers' tensors under their names in the expanded model,
`model.layers.{i}.…` for i < `num_adapters`). `InRaForCausalLM.from_base_and_adapter` puts it back on its base model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PretrainedConfig

from .adapter import get_layer_adapter_config
from .model_parts import decoder_layers_of, decoder_of, unwrap_peft


ADAPTER_CONFIG_NAME = "layer_adapter_config.json"
ADAPTER_WEIGHTS_NAME = "layer_adapter.safetensors"
# Subfolder of `InRaForCausalLM.save_pretrained` holding the artifact
ADAPTER_SUBFOLDER = "layer_adapter"
# Adapter weights keep their names in the full checkpoint (`model.layers.{i}.…`, i < num_adapters)
ADAPTER_KEY_PREFIX = "model.layers."
# Version 1: the fields below. Artifacts written before the version was recorded hold exactly version 1's fields.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


@dataclass
class LayerAdapterArtifact:
    r"""
    An adapter-only artifact: `num_adapters` adapter layers trained on a base model, and that base model's shape.

    Parameters:
        num_adapters (`int`): adapter layers, indices `0..num_adapters-1` of the expanded model.
        base_num_hidden_layers (`int`): decoder layers of the base model.
        model_type, hidden_size, vocab_size: of the base model, checked against it before the adapter is put on.
        init (`str`): how the adapter layers were initialised before training (`"identity"` or `"kaiming"`).
        base_model_name_or_path (`str`): the base model's hub id or path, if known (`""` otherwise).
        format_version (`int`): the artifact format; readers refuse versions they do not know.
        weights (`dict[str, torch.Tensor]`, *optional*): the adapter layers' tensors; `None` when only the config
            was read.
    """

    num_adapters: int
    base_num_hidden_layers: int
    model_type: str
    hidden_size: int
    vocab_size: int
    init: str = "identity"
    base_model_name_or_path: str = ""
    format_version: int = FORMAT_VERSION
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_state_dict(cls, config: PretrainedConfig, state_dict: dict[str, torch.Tensor]) -> "LayerAdapterArtifact":
        """The artifact of an expanded model given its config and (full, unsharded) state dict."""
        marker = get_layer_adapter_config(config)
        if marker is None:
            raise ValueError("The model has no layer adapter (no `config.layer_adapter` marker): nothing to save.")
        n = marker["num_adapters"]
        prefixes = tuple(f"{ADAPTER_KEY_PREFIX}{i}." for i in range(n))
        weights = {name: t.detach().contiguous() for name, t in state_dict.items() if name.startswith(prefixes)}
        leftover = [name for name in weights if "lora_" in name or ".base_layer." in name]
        if not weights or leftover:
            raise ValueError(
                f"The state dict has no plain adapter-layer tensors (found {len(weights)}, PEFT ones: {leftover[:3]}); "
                "merge LoRA into the adapter layers first (`model.merge_and_unload()`)."
            )
        return cls(
            num_adapters=n,
            base_num_hidden_layers=marker["base_num_hidden_layers"],
            model_type=config.model_type,
            hidden_size=config.hidden_size,
            vocab_size=config.vocab_size,
            init=marker["init"],
            base_model_name_or_path=marker["base_model_name_or_path"] or "",
            weights=weights,
        )

    @classmethod
    def from_model(cls, model: nn.Module) -> "LayerAdapterArtifact":
        """The artifact of an expanded model in memory (a causal LM or `InRaForCausalLM`)."""
        return cls.from_state_dict(decoder_of(model).config, unwrap_peft(model).state_dict())

    def save(self, save_directory: str | os.PathLike) -> None:
        """Write the config and the weights to `save_directory`."""
        if self.weights is None:
            raise ValueError("This artifact was read without its weights; load it with `load_weights=True` to save it.")
        os.makedirs(save_directory, exist_ok=True)
        save_file(self.weights, os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        config = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "weights"}
        with open(os.path.join(save_directory, ADAPTER_CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2)

    @classmethod
    def load(
        cls, path_or_hub_id: str | os.PathLike, load_weights: bool = True, subfolder: str = "", **hub_kwargs
    ) -> "LayerAdapterArtifact":
        """
        Read an artifact from a local folder, or from a hub repository (downloaded with
        `huggingface_hub.snapshot_download`, to which `hub_kwargs` such as `revision`, `token` or `cache_dir` go).
        """
        directory = _artifact_directory(str(path_or_hub_id), subfolder, hub_kwargs)
        config_file = os.path.join(directory, ADAPTER_CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"No {ADAPTER_CONFIG_NAME} in {directory}: not an adapter written by `save_adapter` "
                f"(`InRaForCausalLM.save_pretrained` writes one in its `{ADAPTER_SUBFOLDER}/` subfolder)."
            )
        with open(config_file) as f:
            config = json.load(f)
        version = config.setdefault("format_version", 1)
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(
                f"{config_file} has format_version {version}, but this trl-realign reads version "
                f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}. Upgrade trl-realign to read it."
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"weights"}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        unknown, missing = sorted(config.keys() - known), sorted(required - config.keys())
        if unknown or missing:
            raise ValueError(
                f"{config_file} is not a version-{version} adapter config: unknown field(s) {unknown}, missing "
                f"field(s) {missing}. Re-save the adapter with `save_adapter`."
            )
        weights = load_file(os.path.join(directory, ADAPTER_WEIGHTS_NAME)) if load_weights else None
        return cls(**config, weights=weights)

    def check_fits(self, base: nn.Module, source: str) -> None:
        """Raise unless `base` is an unexpanded model of the shape the adapter was trained on (`base` is not touched)."""
        config = base.config
        if get_layer_adapter_config(config) is not None:
            raise ValueError("`base` already has a layer adapter; pass the original (unexpanded) model.")
        expected = {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_hidden_layers": self.base_num_hidden_layers,
        }
        found = {key: getattr(config, key, None) for key in expected}
        if found != expected:
            raise ValueError(f"The adapter in {source} was trained on a base model with {expected}, but `base` has {found}.")
        # Each adapter layer is a copy of the base's bottom layer
        bottom = {name: tensor.shape for name, tensor in decoder_layers_of(base)[0].state_dict().items()}
        expected_shapes = {f"{i}.{name}": shape for i in range(self.num_adapters) for name, shape in bottom.items()}
        weights = self.adapter_layers_state()
        wrong = sorted(
            name for name in expected_shapes.keys() | weights.keys()
            if name not in weights or name not in expected_shapes or weights[name].shape != expected_shapes[name]
        )
        if wrong:
            raise ValueError(
                f"The adapter weights in {source} do not fit the base model's layers ({len(wrong)} tensors "
                f"missing, unexpected or of another shape, e.g. {wrong[:5]}). Pass the base model the adapter was "
                "trained on."
            )

    def adapter_layers_state(self) -> dict[str, torch.Tensor]:
        """The weights as a state dict of `nn.ModuleList(adapter_layers)` (`"{i}.self_attn…"`)."""
        if self.weights is None:
            raise ValueError("This artifact was read without its weights (`load_weights=False`).")
        return {name.removeprefix(ADAPTER_KEY_PREFIX): tensor for name, tensor in self.weights.items()}


def _artifact_directory(path_or_hub_id: str, subfolder: str, hub_kwargs: dict) -> str:
    if os.path.isdir(path_or_hub_id):
        return os.path.join(path_or_hub_id, subfolder)
    if os.path.exists(path_or_hub_id) or path_or_hub_id.startswith((".", "/", "~")) or path_or_hub_id.count("/") > 1:
        raise FileNotFoundError(f"{path_or_hub_id} is not a folder (nor a hub id): no adapter artifact there.")
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    local = snapshot_download(
        repo_id=path_or_hub_id, allow_patterns=[prefix + ADAPTER_CONFIG_NAME, prefix + ADAPTER_WEIGHTS_NAME],
        **hub_kwargs,
    )
    return os.path.join(local, subfolder)


def read_adapter_config(adapter_path: str | os.PathLike, **hub_kwargs) -> LayerAdapterArtifact:
    """The config of an adapter-only artifact (folder or hub id), without its weights."""
    return LayerAdapterArtifact.load(adapter_path, load_weights=False, **hub_kwargs)
