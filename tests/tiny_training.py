"""Trainer arguments for the tiny CPU runs of the test suite (imported by the test modules beside it)."""


def training_kwargs(tmp_path, **overrides) -> dict:
    """A short, deterministic, offline CPU run writing to `tmp_path/out`; `overrides` replace any value."""
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_drop_last=True,
    )
    kwargs.update(overrides)
    return kwargs
