import os

import pytest


# Tests never reach the network: no Hub, no telemetry, wandb offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from trl_realign.data.tokenizer import build_char_tokenizer

    return build_char_tokenizer()
