"""examples/slurm/array_tasks.py: the command line each job-array task would run (dry run)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).parents[1] / "examples" / "slurm" / "array_tasks.py"
SBATCH = HELPER.with_name("spurcli-array.sbatch")
CONFIG = """
out = "runs/{name}"
model = "tiny"
target = "{target}"
class_noun = "thing"
instance_dir = "refs"
[compare]
classifiers = ["effnet-lite0"]
"""


def helper(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VIS"))}
    full_env.update(env or {}, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(HELPER), *args], capture_output=True, text=True, env=full_env
    )


@pytest.fixture
def folder(tmp_path) -> Path:
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, target in (("b-dam", "dam"), ("a-hummingbird", "hummingbird"), ("c-fireboat", 554)):
        (configs / f"{name}.toml").write_text(CONFIG.format(name=name, target=target))
    (configs / "notes.txt").write_text("not a config")
    return configs


def test_dry_run_prints_one_accelerate_command_per_config_in_name_order(folder):
    result = helper(str(folder), "--dry-run", "--gpus", "4", "--set", "sample.n=2")
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    names = ["a-hummingbird", "b-dam", "c-fireboat"]
    assert len(lines) == 3
    for task, (line, name) in enumerate(zip(lines, names, strict=True)):
        assert line == [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_machines",
            "1",
            "--num_processes",
            "4",
            "--main_process_port",
            str(20000 + task),  # a port per task: two tasks may share a node
            "-m",
            "spurcli",
            "run",
            str(folder / f"{name}.toml"),
            "--set",
            "sample.n=2",
        ]
    assert helper(str(folder), "--count").stdout.strip() == "3"


def test_one_gpu_is_a_plain_run_and_the_task_comes_from_slurm(folder):
    result = helper(str(folder), "--dry-run", env={"SLURM_ARRAY_TASK_ID": "1"})
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        sys.executable,
        "-m",
        "spurcli",
        "run",
        str(folder / "b-dam.toml"),
    ]
    gpus = helper(str(folder), "--dry-run", "--task", "0", env={"SLURM_GPUS_ON_NODE": "2"})
    assert "--num_processes 2" in gpus.stdout


def test_bad_configs_and_tasks_are_one_line_each_before_anything_is_submitted(folder):
    (folder / "d-typo.toml").write_text(CONFIG.format(name="x", target="hummingbrid"))
    (folder / "e-table.toml").write_text('out = "x"\n[finetun]\nsteps = 1\n')
    result = helper(str(folder), "--dry-run")
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("error: d-typo.toml: ") and "did you mean" in errors[0]
    assert errors[1].startswith("error: e-table.toml: ") and "[finetun]" in errors[1]
    assert len(result.stdout.splitlines()) == 5  # the commands are still shown
    out_of_range = helper(str(folder), "--dry-run", "--task", "9")
    assert out_of_range.returncode == 1 and "tasks 0-4" in out_of_range.stderr
    empty = folder.parent / "empty"
    empty.mkdir()
    assert "no *.toml configs" in helper(str(empty), "--dry-run").stderr


def test_the_sbatch_script_runs_the_helper_and_requeues_on_sigterm():
    text = SBATCH.read_text()
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)  # valid shell
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:TERM@" in text
    assert '--task "$SLURM_ARRAY_TASK_ID"' in text and "scontrol requeue" in text


def test_dry_run_checks_the_set_values_and_configs_sharing_an_out(folder):
    bad_set = helper(str(folder), "--dry-run", "--set", "sample.n=-3")
    assert bad_set.returncode == 1, bad_set.stderr
    assert "-n must be a positive number" in bad_set.stderr
    (folder / "d-same.toml").write_text(CONFIG.format(name="b-dam", target="dam"))
    shared = helper(str(folder), "--dry-run")
    errors = shared.stderr.strip().splitlines()
    assert shared.returncode == 1 and len(errors) == 1, errors
    assert "d-same.toml" in errors[0] and "also the experiment folder of b-dam.toml" in errors[0]


@pytest.mark.parametrize(
    ("cpus", "gpus", "threads"), [("16", "a100:4", "4"), ("2", "4", "1"), ("8", "", "8")]
)
def test_the_sbatch_script_sets_at_least_one_thread_per_gpu_process(tmp_path, cpus, gpus, threads):
    # The script up to its thread count, run as Slurm would (set -euo pipefail included).
    text = SBATCH.read_text()
    head = text[: text.index('python "$HELPER"')]
    script = tmp_path / "head.sh"
    script.write_text(head + 'echo "threads=$OMP_NUM_THREADS"\n')
    env = {"PATH": "/usr/bin:/bin", "SLURM_CPUS_PER_TASK": cpus}
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = gpus
    result = subprocess.run(
        ["bash", str(script), "configs"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"threads={threads}"
