#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels the GPU image lacks for this check: its python3 is 3.12 with
# transformers 5.17 and no trl, datasets or liger-kernel (/work/.library/device/KINDS.md). Run where PyPI is
# reachable, from the repository root; then name ".whl" in the device call's `carry` (64 MiB at most in all).
# wandb, deepspeed and math-verify are not imported by the check, so they stay behind.
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels=(transformers==5.23.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
        liger-kernel==0.8.5 "$@")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${wheels[@]}"
du -sh .whl
