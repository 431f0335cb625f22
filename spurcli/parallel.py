"""Data parallelism for score and sample: each process takes a shard, results are gathered.

    from spurcli.parallel import Processes
    procs = Processes()                      # one process, or the group torchrun/accelerate started
    mine = procs.shard(list(range(n)))       # strided: process r takes items r, r+W, r+2W, ...
    results = procs.gather(my_results)       # every process gets all results (list concatenation)

Works unchanged on one CPU, one GPU, or many processes on many nodes (`accelerate launch -m
spurcli ...` or `torchrun --nproc_per_node N -m spurcli ...`); on CPU the group uses gloo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def launched_distributed() -> bool:
    """True when a launcher started this process as part of a group."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Processes:
    def __init__(self, device: str | None = None) -> None:
        import torch
        from accelerate import PartialState

        # accelerate forms a CPU (gloo) group only when told cpu=True; without CUDA, a group
        # started by torchrun would otherwise silently run as N independent single processes.
        cpu = device == "cpu" or (device in (None, "auto") and not torch.cuda.is_available())
        self.state = PartialState(cpu=cpu)
        self.rank: int = self.state.process_index
        self.world: int = self.state.num_processes
        self.device = self.state.device if device in (None, "auto") else _device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank :: self.world])

    def gather(self, items: list[Any]) -> list[Any]:
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(items))

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


def _device(name: str) -> Any:
    import torch

    return torch.device(name)
