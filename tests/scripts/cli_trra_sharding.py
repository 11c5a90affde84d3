"""Run `trl-realign trra` in this process (started by a launcher) and record whether the teachers were sharded.

Usage: python cli_trra_sharding.py REPORT.json <trl-realign trra arguments>
"""

import json
import sys

import torch

from trl_realign.cli.main import main
from trl_realign.trainers import TrRaTrainer


def partitioned(engine) -> dict:
    # Under ZeRO-3 a partitioned parameter keeps an empty `data` and its shard in `ds_tensor`
    params = list(getattr(engine, "module", engine).parameters())
    return {
        "num_params": len(params),
        "all_partitioned": all(
            hasattr(p, "ds_tensor") and p.data.numel() == 0 and p.ds_tensor.numel() < p.ds_numel for p in params
        ),
    }


def record_sharding(train):
    def wrapped(self, *args, **kwargs):
        output = train(self, *args, **kwargs)
        if self.accelerator.is_main_process:
            report = {"aligned_model": partitioned(self.aligned_model), "ref_model": partitioned(self.ref_model)}
            with open(sys.argv[1], "w") as f:
                json.dump(report, f)
        return output

    return wrapped


if __name__ == "__main__":
    TrRaTrainer.train = record_sharding(TrRaTrainer.train)
    main(["trra", *sys.argv[2:]])
    # Without this, gloo's threads can outlive the interpreter and abort the process at exit
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
