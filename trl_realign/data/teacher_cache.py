"""
The on-disk teacher cache: the two realignment teachers' final hidden states for every scored token of a dataset.

The fused teacher of TrRa is `λ(W_B h_B + b_B) + (1−λ)(W_A h_A + b_A)`: given `h_A`, `h_B` (what feeds each output
head) and the two heads, it is exact for every λ, divergence and temperature, at 2·H values a token instead of two
vocabulary-sized logit rows. Layout of a cache folder:

    manifest.json                      what makes the cache valid (data, preprocessing, teachers), format version,
                                       `complete` once every shard is written
    rows.safetensors                   `keys` [rows] int64 (content key of each row, see `row_key`), `num_tokens`
                                       [rows] (scored tokens of each row), `shard_starts` [shards + 1] (first row)
    {role}/head.safetensors            `weight` and `bias` of the teacher's output head (role: ref, aligned)
    {role}/shard-00000-of-00008.safetensors   `hidden` [scored tokens of the shard's rows, H], rows in order

A teacher's folder is `manifest["teachers"][role]["directory"]`, relative to the cache: TrRa-iter's later caches
point their `ref` at the first cache's, so A is captured once.

Why safetensors shards and not Arrow: the hidden states keep the teachers' dtype (Arrow has no bf16), a shard is
memory-mapped and sliced per row without reading the rest, and the layout is that of sharded HF checkpoints. Rows are
keyed by content (token ids and labels), not by position, so the cache serves any order, split or subset of the rows
it was captured from. A shard is written to a temporary name and renamed when complete, so a half-written shard is
never read, and an interrupted capture resumes from the shards already there.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from collections import OrderedDict

import numpy as np
import torch


FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ROWS_FILE = "rows.safetensors"
HEAD_FILE = "head.safetensors"
ROLES = ("ref", "aligned")
# Shards are this large by default (hidden states of both teachers count separately): big enough that per-file
# overhead is nil, small enough that an interrupted capture loses little
DEFAULT_SHARD_BYTES = 1 << 30


class TeacherCacheError(ValueError):
    """A teacher cache that cannot serve this run: missing, incomplete, corrupt, or captured for other data/models."""


def row_key(input_ids, labels) -> int:
    """A 63-bit content key of one prepared row: what the teachers see (token ids) and what is scored (labels)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.asarray(input_ids, dtype=np.int64).tobytes())
    digest.update(b"|")
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def iter_prepared_rows(dataset):
    """`(key, labels)` of every row of a prepared dataset (`input_ids`, `labels`), in order, read in batches."""
    for batch in dataset.select_columns(["input_ids", "labels"]).iter(batch_size=1024):
        for input_ids, labels in zip(batch["input_ids"], batch["labels"]):
            yield row_key(input_ids, labels), labels


def scored_token_count(labels) -> int:
    """Positions t whose prediction of token t+1 is scored (labels[t+1] ≠ −100), as the loss's `scored_mask`."""
    labels = np.asarray(labels)
    return int((labels[1:] != -100).sum())


def plan_shard_starts(num_tokens: list[int], bytes_per_token: int, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[int]:
    """First row of each shard (and the row count last): rows in order, a new shard once `shard_bytes` is reached."""
    starts, size = [0], 0
    for row, tokens in enumerate(num_tokens):
        if size and size + tokens * bytes_per_token > shard_bytes:
            starts.append(row)
            size = 0
        size += tokens * bytes_per_token
    starts.append(len(num_tokens))
    return starts


def teacher_directory(directory: str, teacher: dict) -> str:
    return os.path.normpath(os.path.join(directory, teacher["directory"]))


def shard_path(teacher_dir: str, shard: int, num_shards: int) -> str:
    return os.path.join(teacher_dir, f"shard-{shard:05d}-of-{num_shards:05d}.safetensors")


def _atomic_save(tensors: dict, path: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def _atomic_write_json(obj: dict, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class TeacherCacheWriter:
    """
    Writes a cache folder: `start` lays down the manifest and the row index (or checks that an interrupted capture
    of the same plan is there), `write_shard` each shard of each teacher, `finish` marks the cache complete.
    Several processes may write different shards of one folder at once; one of them calls `start` and `finish`.
    """

    def __init__(self, directory: str, manifest: dict, keys: list[int], num_tokens: list[int], shard_starts: list[int]):
        self.directory = directory
        self.manifest = {**manifest, "format_version": FORMAT_VERSION, "num_shards": len(shard_starts) - 1}
        self.keys, self.num_tokens, self.shard_starts = keys, num_tokens, shard_starts
        self.num_shards = len(shard_starts) - 1

    def start(self) -> bool:
        """Write the plan, or check an existing one. Returns whether the folder held an interrupted capture."""
        existing = read_manifest(self.directory)
        if existing is not None:
            planned = {**self.manifest, "complete": existing.get("complete")}
            if existing != planned:
                diff = sorted(k for k in set(existing) | set(planned) if existing.get(k) != planned.get(k))
                raise TeacherCacheError(
                    f"{self.directory} already holds a teacher cache of another capture (it differs in {diff}); "
                    "choose an empty folder, or delete it to capture again."
                )
            return True
        if os.path.isdir(self.directory) and os.listdir(self.directory):
            raise TeacherCacheError(
                f"{self.directory} is not empty and holds no teacher cache; choose an empty or new folder."
            )
        os.makedirs(self.directory, exist_ok=True)
        _atomic_save(
            {
                "keys": torch.tensor(self.keys, dtype=torch.int64),
                "num_tokens": torch.tensor(self.num_tokens, dtype=torch.int64),
                "shard_starts": torch.tensor(self.shard_starts, dtype=torch.int64),
            },
            os.path.join(self.directory, ROWS_FILE),
        )
        _atomic_write_json({**self.manifest, "complete": False}, os.path.join(self.directory, MANIFEST_FILE))
        return False

    def shard_tokens(self, shard: int) -> int:
        return sum(self.num_tokens[self.shard_starts[shard]:self.shard_starts[shard + 1]])

    def teacher_dir(self, role: str) -> str:
        return teacher_directory(self.directory, self.manifest["teachers"][role])

    def shard_done(self, role: str, shard: int) -> bool:
        path = shard_path(self.teacher_dir(role), shard, self.num_shards)
        if not os.path.exists(path):
            return False
        _check_shard(path, self.shard_tokens(shard), self.manifest["teachers"][role])
        return True

    def write_shard(self, role: str, shard: int, hidden: torch.Tensor) -> None:
        expected = self.shard_tokens(shard)
        if hidden.shape[0] != expected:
            raise RuntimeError(f"Shard {shard} of the {role} teacher has {hidden.shape[0]} tokens, planned {expected}.")
        _atomic_save({"hidden": hidden}, shard_path(self.teacher_dir(role), shard, self.num_shards))

    def write_head(self, role: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        tensors = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        _atomic_save(tensors, os.path.join(self.teacher_dir(role), HEAD_FILE))

    def finish(self) -> dict:
        """Check every shard and mark the cache complete. Returns the manifest."""
        roles = self.manifest["teachers"]
        missing = [
            shard_path(self.teacher_dir(role), s, self.num_shards)
            for role in roles
            for s in range(self.num_shards)
            if not self.shard_done(role, s)
        ]
        missing += [p for p in (os.path.join(self.teacher_dir(r), HEAD_FILE) for r in roles) if not os.path.exists(p)]
        if missing:
            raise TeacherCacheError(
                f"The capture into {self.directory} is incomplete ({len(missing)} shard(s) missing, e.g. "
                f"{missing[:1]}); run it again to resume."
            )
        manifest = {**self.manifest, "complete": True, "disk_bytes": directory_bytes(self.directory)}
        _atomic_write_json(manifest, os.path.join(self.directory, MANIFEST_FILE))
        return manifest


def directory_bytes(directory: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(directory)
        for name in names
        if ".tmp-" not in name
    )


_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_shard(path: str, num_tokens: int, teacher: dict):
    """Open a shard (memory-mapped) and check it is whole and has the planned shape and dtype; returns the handle."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(path, framework="pt")
        hidden = handle.get_slice("hidden")
    except (SafetensorError, OSError) as exc:
        raise TeacherCacheError(
            f"Teacher cache shard {path} is corrupt or truncated ({exc}); delete it and run `trl-realign "
            "cache-teachers` (or `build_teacher_cache`) again with the same options to recapture it."
        ) from None
    shape, dtype = list(hidden.get_shape()), hidden.get_dtype()
    expected_dtype = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[teacher["dtype"]]
    if shape != [num_tokens, teacher["hidden_size"]] or dtype != expected_dtype:
        raise TeacherCacheError(
            f"Teacher cache shard {path} holds {dtype} {shape}, the manifest plans {expected_dtype} "
            f"{[num_tokens, teacher['hidden_size']]}; delete it and capture again to rebuild it."
        )
    return handle


class TeacherCache:
    """
    A complete cache folder, read with memory maps: `hidden(role, rows)` concatenates the cached hidden states of
    those rows (in order), `heads(role)` is a teacher's output head, `row_of_key` finds a prepared row.
    """

    def __init__(self, directory: str):
        from safetensors.torch import load_file

        manifest = read_manifest(directory)
        if manifest is None:
            raise TeacherCacheError(
                f"No teacher cache in {directory} (no {MANIFEST_FILE}); capture one first with `trl-realign "
                "cache-teachers --config recipe.yaml --teacher_cache DIR` or `build_teacher_cache(...)`."
            )
        if manifest.get("format_version") != FORMAT_VERSION:
            raise TeacherCacheError(
                f"The teacher cache in {directory} has format version {manifest.get('format_version')}, this "
                f"trl-realign reads version {FORMAT_VERSION}; capture it again with this version."
            )
        if not manifest.get("complete"):
            raise TeacherCacheError(
                f"The teacher cache in {directory} is incomplete (its capture was interrupted); run the same "
                "`cache-teachers` command again to resume it."
            )
        self.directory, self.manifest = directory, manifest
        try:
            rows = load_file(os.path.join(directory, ROWS_FILE))
        except Exception as exc:  # noqa: BLE001 - any failure to read the index means the same thing
            raise TeacherCacheError(f"The row index of the teacher cache in {directory} is unreadable ({exc}).") from None
        self.num_tokens = rows["num_tokens"].tolist()
        self.shard_starts = rows["shard_starts"].tolist()
        self.offsets = np.concatenate([[0], np.cumsum(self.num_tokens)]).tolist()
        self._row_of_key = {key: row for row, key in enumerate(rows["keys"].tolist())}
        self._shards: OrderedDict = OrderedDict()

    @property
    def teachers(self) -> dict:
        return self.manifest["teachers"]

    @property
    def num_shards(self) -> int:
        return len(self.shard_starts) - 1

    def row_of_key(self, key: int) -> int | None:
        return self._row_of_key.get(key)

    def heads(self, role: str, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        from safetensors import safe_open

        path = os.path.join(teacher_directory(self.directory, self.teachers[role]), HEAD_FILE)
        if not os.path.exists(path):
            raise TeacherCacheError(f"The {role} teacher's head {path} is missing; capture the cache again.")
        with safe_open(path, framework="pt") as f:
            weight = f.get_tensor("weight")
            bias = f.get_tensor("bias") if "bias" in set(f.keys()) else None
        if device is not None:
            weight, bias = weight.to(device), None if bias is None else bias.to(device)
        return weight, bias

    def _shard(self, role: str, shard: int):
        key = (role, shard)
        if key not in self._shards:
            start, end = self.shard_starts[shard], self.shard_starts[shard + 1]
            path = shard_path(teacher_directory(self.directory, self.teachers[role]), shard, self.num_shards)
            if not os.path.exists(path):
                raise TeacherCacheError(
                    f"Teacher cache shard {path} is missing; run `cache-teachers` again with the same options to "
                    "recapture it."
                )
            self._shards[key] = (_check_shard(path, self.offsets[end] - self.offsets[start], self.teachers[role]), start)
            # A few shards open at a time: their maps are cheap, but file handles are not unlimited
            if len(self._shards) > 16:
                self._shards.popitem(last=False)
        self._shards.move_to_end(key)
        return self._shards[key]

    def hidden(self, role: str, rows) -> torch.Tensor:
        """The cached hidden states of `rows` (row indices), concatenated in order: `[sum of their tokens, H]`."""
        parts = []
        for row in rows:
            shard = bisect_right(self.shard_starts, row) - 1
            handle, first = self._shard(role, shard)
            start = self.offsets[row] - self.offsets[first]
            parts.append(handle.get_slice("hidden")[start:start + self.num_tokens[row]])
        if not parts:
            return torch.empty(0, self.teachers[role]["hidden_size"], dtype=_TORCH_DTYPES[self.teachers[role]["dtype"]])
        return torch.cat(parts)
