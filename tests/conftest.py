import os

import pytest


# Tests never reach the network: no Hub, no telemetry, wandb offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting starve the other xdist worker on a 2-core machine (tiny matmuls ~100x slower)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tokenizer():
    from trl_realign.data.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


# Two xdist workers share two cores: one intra-op thread each avoids oversubscription (tiny models get ~100x slower)
import torch  # noqa: E402

torch.set_num_threads(1)
