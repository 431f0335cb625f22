"""One `spurcli run` per class config, one Slurm array task per config (see spurcli-array.sbatch).

    python examples/slurm/array_tasks.py configs/ --dry-run --gpus 4   # every task's command line
    python examples/slurm/array_tasks.py configs/ --count              # N tasks: --array=0-(N-1)
    python examples/slurm/array_tasks.py configs/ --task 7             # run task 7's command (exec)

Task i runs the i-th ``*.toml`` of the folder in name order, so a task keeps its config when the
job is requeued. With more than one GPU the command is ``accelerate launch --multi_gpu`` over that
many processes on the task's node (``--gpus``; default: ``$SLURM_GPUS_ON_NODE``, else the entries of
``$CUDA_VISIBLE_DEVICES``, else 1), with a rendezvous port derived from the task so that two tasks
sharing a node do not collide; with one it is plain ``python -m spurcli run``. A preempted or
timed-out task that runs again continues where it stopped: `spurcli run` skips finished stages,
finetune resumes from its last checkpoint (SIGTERM writes one), sample from its last image.

``--dry-run`` also checks every config (as `spurcli run` does first: keys, the class, the model
names), so a typo fails here, before a hundred jobs queue: each bad config is one line on stderr
and the exit code is 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

PORT_BASE = 20000  # accelerate's rendezvous port: PORT_BASE + task % PORT_SPAN
PORT_SPAN = 10000


def configs(folder: Path) -> list[Path]:
    """The class configs of ``folder``, in the order that numbers the array tasks."""
    if not folder.is_dir():
        raise SystemExit(f"error: config folder not found: {folder}")
    found = sorted(folder.glob("*.toml"))
    if not found:
        raise SystemExit(f"error: no *.toml configs in {folder}")
    return [p.absolute() for p in found]


def default_gpus() -> int:
    """GPUs of this task: what Slurm allocated on the node, else the visible devices, else 1."""
    for value in (os.environ.get("SLURM_GPUS_ON_NODE"), os.environ.get("SLURM_GPUS_PER_NODE")):
        if value and value.split(":")[-1].isdigit():  # "4" or "a100:4"
            return max(1, int(value.split(":")[-1]))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return max(1, len([d for d in visible.split(",") if d.strip()]))


def command(config: Path, task: int, gpus: int, sets: list[str]) -> list[str]:
    """The command line of one task: `spurcli run CONFIG` on ``gpus`` processes."""
    run = ["-m", "spurcli", "run", os.fspath(config)] + [a for s in sets for a in ("--set", s)]
    if gpus <= 1:
        return [sys.executable, *run]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_machines", "1", "--num_processes", str(gpus)]
    launch += ["--main_process_port", str(PORT_BASE + task % PORT_SPAN)]
    return [*launch, *run]


def check(paths: list[Path], sets: list[str] = ()) -> list[str]:
    """One line per config that `spurcli run` would refuse (with the ``--set`` values the tasks
    get): tables, keys, values, the class, the model names (with "did you mean"), the weights
    files; and one per experiment folder that two configs share (their tasks would write into
    one folder, or wait on each other's lock)."""
    from spurcli.errors import SpurcliError, UsageError
    from spurcli.experiment.plan import load_experiment
    from spurcli.experiment.run import check_experiment

    problems = []
    outs: dict[Path, str] = {}
    for path in paths:
        try:
            exp = load_experiment(path, sets)
            check_experiment(exp)
        except (SpurcliError, UsageError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        out = Path(exp.out).resolve()
        if out in outs:
            problems.append(
                f"{path.name}: out {exp.out} is also the experiment folder of {outs[out]}; give "
                "each config its own out"
            )
        outs.setdefault(out, path.name)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder of run configs (*.toml), one per task")
    parser.add_argument("--task", type=int, help="array task index (default $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--gpus", type=int, help="processes per task (default: see above)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="passed on")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the command lines, run none")
    mode.add_argument("--count", action="store_true", help="print the number of tasks")
    args = parser.parse_args(argv)

    paths = configs(args.folder)
    if args.count:
        print(len(paths))
        return 0
    gpus = args.gpus if args.gpus is not None else default_gpus()
    task = args.task
    if task is None and os.environ.get("SLURM_ARRAY_TASK_ID", "").isdigit():
        task = int(os.environ["SLURM_ARRAY_TASK_ID"])
    if task is not None and not 0 <= task < len(paths):
        print(f"error: task {task} is out of range: {args.folder} has {len(paths)} configs "
              f"(tasks 0-{len(paths) - 1})", file=sys.stderr)  # fmt: skip
        return 1
    if args.dry_run:
        problems = check(paths if task is None else [paths[task]], args.sets)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        chosen = range(len(paths)) if task is None else [task]
        for i in chosen:
            print(shlex.join(command(paths[i], i, gpus, args.sets)))
        return 1 if problems else 0
    if task is None:
        print("error: --task N (or $SLURM_ARRAY_TASK_ID) is required to run", file=sys.stderr)
        return 1
    argv_run = command(paths[task], task, gpus, args.sets)
    print(f"task {task}: {shlex.join(argv_run)}", file=sys.stderr, flush=True)
    os.execv(argv_run[0], argv_run)  # the launcher takes this process: Slurm's signals reach it
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
