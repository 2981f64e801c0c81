"""Work split over the ranks of a ``torch.distributed`` run (``torchrun``); one rank otherwise.

``torchrun --nproc-per-node N -m adatsq.cli quantize ...`` (or several nodes with
``--nnodes``) starts N processes; :func:`init_from_env` joins them into one group (NCCL where
CUDA is present, gloo on CPUs). Every rank holds the whole model. The calibration prompts are
split into contiguous shares (:meth:`Ranks.share`), each rank captures its share, and the
statistics are reduced (:meth:`Ranks.sum_`, ...), so every rank ends with the same Hessians and
Fisher scores. Independent items of work (layers to solve, steps to score, paths to try) are
handed out in rounds of one item per rank and their results exchanged (:func:`map_items`).

With a single process every function here is a no-op, so the rest of the library never asks how
many ranks there are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this rank writes files (rank 0)."""
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (the first ``n % world`` ranks get one
        more).

        Example:
            >>> [list(Ranks(r, 3).share(7)) for r in range(3)]
            [[0, 1, 2], [3, 4], [5, 6]]
        """
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def _reduce_(self, t: torch.Tensor, op) -> torch.Tensor:
        if self.world > 1:
            device = _device()
            buffer = t.to(device) if t.device != device else t
            dist.all_reduce(buffer, op=op)
            if buffer is not t:
                t.copy_(buffer)
        return t

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place (every rank gets the same values)."""
        return self._reduce_(t, dist.ReduceOp.SUM if self.world > 1 else None)

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of ``t`` over the ranks, in place."""
        return self._reduce_(t, dist.ReduceOp.MAX if self.world > 1 else None)

    def min_(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise minimum of ``t`` over the ranks, in place."""
        return self._reduce_(t, dist.ReduceOp.MIN if self.world > 1 else None)

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (picklable objects: tensors, arrays, lists)."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``value`` on every rank."""
        if self.world == 1:
            return value
        box = [value if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=_device())
        return box[0]

    def agree(self, value: Any, what: str) -> None:
        """Raises ``ValueError`` on every rank when ``value`` (small, picklable) differs between
        ranks: what each read of a checkpoint found, which must be the same everywhere."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            raise ValueError(f"the ranks see different {what}; put --out on a file system "
                             "every node shares")

    def barrier(self) -> None:
        """Waits for every rank (a file rank 0 wrote is then visible to all)."""
        if self.world > 1:
            dist.barrier()


def _device() -> torch.device:
    """Where collectives take their tensors: the rank's GPU for NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current() -> Ranks:
    """The ranks of the initialized process group, or a single rank."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def init_from_env() -> Ranks:
    """Joins the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment;
    NCCL with one GPU per local rank where CUDA is present, else gloo); a single rank otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed; "
                         "run one process")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    ranks = current()
    log.info("rank %d of %d (%s)", ranks.rank, ranks.world, backend)
    return ranks


def map_items(n: int, compute: Callable[[int], Any], done: dict[int, Any] | None = None,
              on_result: Callable[[int, Any], None] | None = None, desc: str = "",
              progress: bool = True) -> list[Any]:
    """``[compute(i) for i in range(n)]`` with the work spread over the ranks.

    Items not in ``done`` (results of an earlier, interrupted run) are computed in rounds: in
    each round every rank computes one item and all ranks receive every result, then call
    ``on_result(i, result)`` for each in order (to place it, or to checkpoint it). Every rank
    returns the full list. Results must be picklable; ``compute`` must not use collectives. An
    error on one rank is raised on every rank (its own where it happened).

    Example:
        >>> map_items(3, lambda i: i * i, done={1: 1}, progress=False)
        [0, 1, 4]
    """
    ranks = current()
    results = dict(done or {})
    todo = [i for i in range(n) if i not in results]
    bar = tqdm(total=n, initial=n - len(todo), desc=desc, leave=False,
               disable=not progress or not ranks.main)
    for start in range(0, len(todo), ranks.world):
        round_items = todo[start:start + ranks.world]
        mine = round_items[ranks.rank] if ranks.rank < len(round_items) else None
        try:
            value = (True, compute(mine) if mine is not None else None)
        except Exception as exc:  # every rank must leave the round, or the others wait forever
            if ranks.world == 1:
                raise
            value, error = (False, f"{type(exc).__name__}: {exc}"), exc
        gathered = ranks.gather(value)
        failed = [(r, v) for r, (ok, v) in enumerate(gathered) if not ok]
        if failed:
            if not value[0]:
                raise error
            raise ValueError(f"rank {failed[0][0]} failed: {failed[0][1]}")
        for i, (_, result) in zip(round_items, gathered):
            results[i] = result
            if on_result is not None:
                on_result(i, result)
        bar.update(len(round_items))
    bar.close()
    return [results[i] for i in range(n)]
