"""The reference model of adapter-only DPO and TrRa: the trained model itself with its adapter layers skipped."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ...modeling.adapter import bypass_layer_adapter
from ...modeling.model_parts import decoder_of


class AdapterBypassedModel(nn.Module):
    """
    The trained model with its adapter layers skipped: exactly the original model, sharing every weight (no copy).

    Stands in for a reference model wherever TRL or TrRa expect one: calling it runs the model's forward inside
    [`bypass_layer_adapter`], `base_model` runs its bypassed decoder, and `get_output_embeddings` is the model's own
    head. The model is held outside the module tree, so this module has no parameters of its own: freezing, `eval()`
    or device moves applied to it leave the trained model alone, except that while this module is in eval mode its
    calls run the model in eval mode (no dropout in a reference, even inside the training student's forward) and then
    give every module its own mode back.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = (model,)  # a tuple, so that `nn.Module` does not register (and re-own) the trained model

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    @property
    def config(self):
        return decoder_of(self.model).config

    @property
    def name_or_path(self) -> str:
        return getattr(self.model, "name_or_path", "") or ""

    @property
    def base_model(self):
        decoder = decoder_of(self.model)

        def bypassed_decoder(*args, **kwargs):
            with self._bypassed():
                return decoder(*args, **kwargs)

        return bypassed_decoder

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, *args, **kwargs):
        with self._bypassed():
            return self.model(*args, **kwargs)

    @contextmanager
    def _bypassed(self):
        # `eval()` on this module reaches no module of the model, which it does not own
        modes = [(module, module.training) for module in self.model.modules()]
        if not self.training:
            self.model.eval()
        try:
            with bypass_layer_adapter(self.model):
                yield
        finally:
            for module, training in modes:
                module.training = training

    def state_dict(self, *args, **kwargs):
        # The original model's weights (what TRL hashes to key its cache of precomputed reference log-probs)
        with bypass_layer_adapter(self.model), torch.no_grad():
            return self.model.state_dict(*args, **kwargs)
