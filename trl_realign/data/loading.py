"""One entry point for "a dataset": a Hugging Face Hub id, a local folder, or a .json/.jsonl/.parquet/.csv file."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk


# `datasets` builder names of the file formats we accept, keyed by suffix
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _looks_like_a_path(name: str) -> bool:
    # A hub id is "name" or "owner/name"; anything with a file suffix, more slashes or a leading ./ ~ / is a path
    return (
        Path(name).suffix.lower() in FILE_BUILDERS
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
    )


def check_dataset_source(name: str) -> None:
    """
    Raise a clear error now if `name` names a local file or folder that does not exist or has an unsupported format.

    Called by the CLI before any model is loaded, so a typo in `--dataset_name` costs seconds, not a model load. Hub
    ids are not checked (that needs the network).
    """
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() not in FILE_BUILDERS:
            raise ValueError(
                f"Unsupported dataset file {name!r}: use a {'/'.join(FILE_BUILDERS)} file, a folder, or a hub id."
            )
        return
    if _looks_like_a_path(name):
        raise FileNotFoundError(
            f"Dataset {name!r} looks like a local path but does not exist. Pass an existing .json/.jsonl/.parquet/"
            ".csv file, a folder (written by `save_to_disk` or holding data files), or a Hugging Face Hub id."
        )


def load_dataset_source(name: str, config: str | None = None, **kwargs) -> DatasetDict:
    """
    Load a dataset from a hub id, a local folder or a local data file, always as a [`~datasets.DatasetDict`].

    - a .json/.jsonl/.parquet/.csv file is read with the matching `datasets` builder (its split is `"train"`);
    - a folder written by `Dataset.save_to_disk`/`DatasetDict.save_to_disk` is read with `load_from_disk`
      (a single `Dataset` becomes the `"train"` split);
    - any other folder, or a hub id, goes to `datasets.load_dataset(name, config)`.

    Args:
        name (`str`): hub id, folder or file.
        config (`str`, *optional*): dataset configuration name (hub ids and data folders only).
        **kwargs: passed to `datasets.load_dataset`.
    """
    check_dataset_source(name)
    path = Path(name).expanduser()
    if path.is_file():
        return load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path), **kwargs)
    if path.is_dir() and any((path / marker).exists() for marker in ("dataset_dict.json", "state.json")):
        loaded = load_from_disk(str(path))
        return DatasetDict(train=loaded) if isinstance(loaded, Dataset) else loaded
    return load_dataset(name, name=config, **kwargs)
