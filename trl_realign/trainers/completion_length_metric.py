"""The `completion_length` metric for TRL trainers that do not log it themselves."""

from __future__ import annotations


class CompletionLengthMetricMixin:
    """
    Logs `completion_length`, the mean number of completion tokens per sequence (as [`TrRaTrainer`] does), for trainers
    whose batches carry `completion_mask` (DPO: chosen and rejected rows) or `labels` with -100 outside completions (SFT).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs.get("completion_mask")
        if mask is None and "labels" in inputs:
            mask = inputs["labels"] != -100
        if mask is not None:
            # Every process calls compute_loss once per micro-batch, so the gather is matched across ranks
            lengths = self.accelerator.gather_for_metrics(mask.sum(dim=1).float())
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["completion_length"].append(lengths.mean().item())
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
