"""Sweeps and wandb logging, offline: points, one run per point in one group, the wandb-agent path, logged fields."""

import itertools
import json
import math

import pytest
import yaml

from trl_realign.cli.main import main, run_command
from trl_realign.sweep import SweepConfig, apply_overrides, sweep_points
from trl_realign.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("sweep_models")
    for name, family, seed in (("A", "qwen2", 0), ("B", "qwen2", 1), ("base", "llama", 2)):
        tiny_causal_lm(family, seed=seed, vocab_size=len(tokenizer)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    rows = [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(1, 5)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"prompt": [{"role": "user", "content": f"{i}+{i}="}], "chosen": [{"role": "assistant", "content": str(2 * i)}],
              "rejected": [{"role": "assistant", "content": str(2 * i + 1)}]} for i in range(1, 5)]  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    recipe = root / "trra.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(root / "A"), "aligned_model_name_or_path": str(root / "B"),
        "dataset_name": str(root / "data.jsonl"), "use_cpu": True, "bf16": False, "max_steps": 1,
        "per_device_train_batch_size": 2, "save_strategy": "no", "logging_steps": 1, "dtype": "float32",
        "disable_tqdm": True,
    }))  # fmt: skip
    return root


@pytest.fixture
def wandb_runs(monkeypatch, tmp_path):
    """Offline wandb in tmp_path; every run's config, group and summary are captured when it finishes."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    wandb.teardown()  # as in a fresh process: wandb reads the environment when it is first set up
    runs = []
    finish = wandb.finish

    def capturing_finish(*args, **kwargs):
        if wandb.run is not None:
            runs.append({"id": wandb.run.id, "name": wandb.run.name, "group": wandb.run.group,
                         "config": dict(wandb.run.config), "summary": dict(wandb.run.summary)})  # fmt: skip
        return finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", capturing_finish)
    yield runs
    finish()


# --------------------------------------------------------------------------------------------------------- points
def test_grid_points_are_the_cartesian_product():
    config = SweepConfig(parameters={"realign_lambda": {"values": [0.5, 2.0, 5.0]}, "learning_rate": {"values": [1e-5, 2e-5]},
                                     "beta": {"value": 0.1}})  # fmt: skip
    expected = [{"realign_lambda": lam, "learning_rate": lr, "beta": 0.1} for lam, lr in itertools.product([0.5, 2.0, 5.0], [1e-5, 2e-5])]
    assert sweep_points(config) == expected


def test_random_points_are_seeded_and_in_range():
    params = {"realign_lambda": {"min": 0.5, "max": 10.0, "distribution": "log_uniform_values"},
              "beta": {"min": 0.0, "max": 1.0}, "learning_rate": {"values": [1e-5, 2e-5]}}  # fmt: skip
    points = sweep_points(SweepConfig(method="random", count=200, seed=3, parameters=params))
    assert points == sweep_points(SweepConfig(method="random", count=200, seed=3, parameters=params))
    assert points != sweep_points(SweepConfig(method="random", count=200, seed=4, parameters=params))
    assert len(points) == 200
    lambdas = [p["realign_lambda"] for p in points]
    assert all(0.5 <= x <= 10.0 for x in lambdas) and all(0 <= p["beta"] <= 1 for p in points)
    assert {p["learning_rate"] for p in points} == {1e-5, 2e-5}
    # log-uniform: about half the draws below the geometric mean of the range (uniform would put ~24% there)
    below = sum(x < math.sqrt(0.5 * 10.0) for x in lambdas) / len(lambdas)
    assert 0.4 < below < 0.6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"parameters": {"realign_lambda": {"min": 0, "max": 1}}}, "grid sweep needs `values`"),
        ({"method": "random", "parameters": {"beta": {"values": [0.1]}}}, "needs `count`"),
        ({"parameters": {}}, "needs `parameters`"),
        ({"parameters": {"beta": [0.1, 0.2]}}, "must be a mapping"),
        ({"parameters": {"output_dir": {"values": ["a"]}}}, "set per point"),
        ({"method": "bayes", "parameters": {"beta": {"values": [0.1]}}}, "Unknown sweep `method"),
        ({"recipe": "missing.yaml", "parameters": {"beta": {"values": [0.1]}}}, "not found"),
    ],
)
def test_sweep_config_errors(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        SweepConfig(**kwargs)


def test_sweep_keys_must_be_options_of_the_command(models, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"command": "trra", "recipe": str(models / "trra.yaml"),
                                     "parameters": {"realign_lamda": {"values": [1.0]}}}))  # fmt: skip
    with pytest.raises(ValueError, match=r"\['realign_lamda'\], which are not options of `trl-realign trra`"):
        run_command(["sweep", "--config", str(sweep)])


def test_apply_overrides():
    from trl_realign.data.prepare import DatasetPreparationArguments

    (args,) = apply_overrides((DatasetPreparationArguments(),), {"min_completion_tokens": 5})
    assert args.min_completion_tokens == 5
    with pytest.raises(ValueError, match="not options of this command"):
        apply_overrides((DatasetPreparationArguments(),), {"nope": 1})


# -------------------------------------------------------------------------------------------- local sweep runs
TRRA_METRICS = ("train/divergence", "train/student_entropy", "train/teacher_entropy", "train/completion_length",
                "train/learning_rate", "train/loss")  # fmt: skip


def test_local_sweep_logs_one_run_per_point_in_one_group(models, tmp_path, wandb_runs):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "command": "trra", "recipe": str(models / "trra.yaml"), "method": "grid", "output_dir": str(tmp_path / "grid"),
        "parameters": {"realign_lambda": {"values": [0.5, 3.0]}, "learning_rate": {"values": [1e-3]}},
    }))  # fmt: skip
    main(["sweep", "--config", str(sweep), "--group", "lambda-grid"])
    assert len(wandb_runs) == 2 and len({run["id"] for run in wandb_runs}) == 2
    for run, lam in zip(wandb_runs, [0.5, 3.0]):
        assert run["group"] == "lambda-grid"
        assert run["config"]["realign_lambda"] == lam and run["config"]["learning_rate"] == 1e-3
            # the realignment fields: λ, β (resolved: reverse KL is β = 1) and the divergence in the config; metrics too
        assert run["config"]["beta"] == 1.0 and run["config"]["divergence"] == "reverse_kl"
        assert all(key in run["summary"] for key in TRRA_METRICS), sorted(run["summary"])
        assert (tmp_path / "grid" / run["name"] / "model.safetensors").is_file()
        # Every point trained from the one teacher cache the sweep captured first, and says so in its config
        assert run["config"]["teacher_cache"] == str(tmp_path / "grid" / "teacher_cache")
        assert run["config"]["teacher_cache_teachers"]["aligned"] == str(models / "B")
    assert json.loads((tmp_path / "grid" / "teacher_cache" / "manifest.json").read_text())["complete"]


def test_export_wandb_sweep(models, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    parameters = {"realign_lambda": {"min": 0.5, "max": 10.0, "distribution": "log_uniform_values"}, "beta": {"values": [0.1, 0.5]}}
    sweep.write_text(yaml.safe_dump({"command": "trra", "recipe": str(models / "trra.yaml"), "method": "random", "count": 6,
                                     "parameters": parameters, "overrides": {"max_steps": 3}, "output_dir": "out/s"}))  # fmt: skip
    main(["sweep", "--config", str(sweep), "--export_wandb_sweep", str(tmp_path / "wandb.yaml")])
    exported = yaml.safe_load((tmp_path / "wandb.yaml").read_text())
    assert exported["method"] == "random" and exported["run_cap"] == 6 and exported["parameters"] == parameters
    assert exported["metric"] == {"name": "train/loss", "goal": "minimize"}
    # the swept values are not flags: the entry point reads them from wandb.config
    assert exported["command"] == ["trl-realign", "trra", "--config", str(models / "trra.yaml"), "--max_steps", "3",
                                   "--report_to", "wandb", "--teacher_cache", "out/s/teacher_cache",
                                   "--output_dir", "out/s"]  # fmt: skip
    assert SweepConfig(**{k: v for k, v in exported.items() if k in ("method", "parameters")}, count=6).parameters == parameters


def test_entry_point_reads_wandb_config_under_an_agent(models, tmp_path, wandb_runs, monkeypatch):
    # What `wandb agent` does before starting the command: a sweep id, a run id, and the point in a param file
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"realign_lambda": {"value": 3.5}, "learning_rate": {"value": 0.003}}))
    monkeypatch.setenv("WANDB_SWEEP_ID", "testsweep")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    main(["trra", "--config", str(models / "trra.yaml"), "--report_to", "wandb", "--output_dir", str(tmp_path / "agent")])
    import wandb

    wandb.finish()
    (run,) = wandb_runs
    # the Trainer writes its own args into the config: they hold the agent's values only if they were applied
    assert run["id"] == "agentrun1"
    assert run["config"]["realign_lambda"] == 3.5 and run["config"]["learning_rate"] == 0.003
    assert (tmp_path / "agent" / "agentrun1" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_adapter_trainers_log_their_fields(models, tmp_path, wandb_runs, command):
    data = "data.jsonl" if command == "sft" else "pairs.jsonl"
    extra = ["--beta", "0.05"] if command == "dpo" else []
    main([command, "--model_name_or_path", str(models / "base"), "--dataset_name", str(models / data), "--use_cpu", "true",
          "--bf16", "false", "--max_steps", "1", "--per_device_train_batch_size", "2", "--learning_rate", "0.001",
          "--report_to", "wandb", "--save_strategy", "no", "--logging_steps", "1", "--dtype", "float32",
          "--output_dir", str(tmp_path / command), "--disable_tqdm", "true", *extra])  # fmt: skip
    import wandb

    wandb.finish()
    (run,) = wandb_runs
    assert run["config"]["learning_rate"] == 0.001 and run["config"]["num_adapters"] == 1
    assert run["config"]["layer_adapter"]["num_adapters"] == 1  # the model config's marker
    assert "train/learning_rate" in run["summary"] and "train/loss" in run["summary"]
    if command == "dpo":
        assert run["config"]["beta"] == 0.05
        assert {"train/rewards/chosen", "train/rewards/margins"} <= set(run["summary"]), sorted(run["summary"])
    else:
        assert {"train/entropy", "train/num_tokens"} <= set(run["summary"]), sorted(run["summary"])


def test_sweep_with_launcher_options_launches_each_point(models, tmp_path, monkeypatch):
    import subprocess
    import sys

    from trl_realign.cli import launch

    calls = []
    monkeypatch.setattr(launch.subprocess, "run", lambda command, env: calls.append((command, env)) or subprocess.CompletedProcess(command, 0))
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"command": "trra", "recipe": str(models / "trra.yaml"), "output_dir": str(tmp_path / "g"),
                                     "parameters": {"beta": {"values": [0.1, 0.9]}}, "overrides": {"divergence": "jsd"}}))  # fmt: skip
    main(["sweep", "--config", str(sweep), "--num_processes", "2", "--accelerate_config", "zero2"])
    assert len(calls) == 3
    cache = str(tmp_path / "g" / "teacher_cache")
    # The teachers are captured once, under the same launcher, before the points
    assert calls[0][0][9:] == ["cache-teachers", "--config", str(models / "trra.yaml"), "--divergence", "jsd",
                               "--report_to", "wandb", "--teacher_cache", cache,
                               "--output_dir", str(tmp_path / "g" / "teacher_cache_capture")]  # fmt: skip
    for (command, env), beta in zip(calls[1:], [0.1, 0.9]):
        name = f"g-{[0.1, 0.9].index(beta):02d}-beta{beta}"
        assert command == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file",
                           launch.accelerate_config_path("zero2"), "-m", "trl_realign.cli.main", "trra",
                           "--config", str(models / "trra.yaml"), "--divergence", "jsd", "--report_to", "wandb",
                           "--teacher_cache", cache, "--beta", str(beta), "--run_name", name, "--output_dir", str(tmp_path / "g" / name)]  # fmt: skip
        assert env["WANDB_RUN_GROUP"] == "g"


def test_only_the_cli_imports_the_cli():
    """Layering: the library (sweep configuration included) never imports `trl_realign.cli`; the CLI imports it."""
    import ast
    from pathlib import Path

    package = Path(__file__).parent.parent / "trl_realign"
    offenders = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        if relative.parts[0] == "cli" or relative == Path("__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level and not node.module:  # `from . import cli`
                    names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name == "cli" or name.startswith("cli.") or name.startswith("trl_realign.cli") for name in names):
                offenders.append(f"{relative}:{node.lineno}")
    assert offenders == []


def test_run_sweep_is_exported_and_dry_runs(tmp_path, capsys):
    from trl_realign import SweepConfig as ExportedConfig
    from trl_realign import run_sweep

    config = ExportedConfig(
        parameters={"realign_lambda": {"values": [0.5, 2.0]}}, output_dir=str(tmp_path / "lam"), dry_run=True
    )
    records = run_sweep(config)
    assert [r["point"] for r in records] == [{"realign_lambda": 0.5}, {"realign_lambda": 2.0}]
    assert [r["output_dir"] for r in records] == [str(tmp_path / "lam" / r["run_name"]) for r in records]
    printed = capsys.readouterr().out
    assert printed.count("trl-realign trra ") == 2 and "--realign_lambda 2.0" in printed
    cache = str(tmp_path / "lam" / "teacher_cache")
    assert printed.count("trl-realign cache-teachers ") == 1 and printed.count(f"--teacher_cache {cache}") == 3


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"parameters": {"realign_lambda": {"values": [1.0]}, "beta": {"values": [0.5]}}}, "teacher_cache"),
        ({"parameters": {"max_length": {"values": [64, 128]}}}, None),  # changes what the teachers see
        ({"parameters": {"realign_lambda": {"values": [1.0]}}, "teacher_cache": False}, None),
        ({"parameters": {"learning_rate": {"values": [1e-3]}}, "command": "sft"}, None),
        ({"parameters": {"seed": {"values": [1]}}, "overrides": {"teacher_cache": "/mine"}}, "/mine"),
    ],
)
def test_sweep_uses_a_teacher_cache_only_when_the_teachers_see_the_same_rows(tmp_path, kwargs, expected):
    from trl_realign.sweep import sweep_teacher_cache

    cache, why = sweep_teacher_cache(SweepConfig(output_dir=str(tmp_path), **kwargs))
    if expected == "teacher_cache":
        assert cache == str(tmp_path / "teacher_cache")
    else:
        assert cache == expected and why
