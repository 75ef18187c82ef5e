"""Scale-out across processes and GPUs with accelerate: which share of the work is this process's, and
how the shares come back together in a fixed order.

    accelerate launch --multi_gpu --num_processes P -m assistant rsft --config ...

starts P copies of a command (on a machine without GPUs accelerate's launcher still wants `--multi_gpu`
for more than one process; they then talk over gloo). Work is split by *batch*: process r takes batches
r, r + P, r + 2P, ... of the same fixed slices one process would use, so every batch keeps its members,
its seed and its arithmetic, and the merged result is the one-process result. Results are gathered and
put back in utterance order; only the main process writes files. Without a launcher P = 1 and every
function here is a no-op.
"""

from __future__ import annotations

import torch


def state():
    """accelerate's process state (gloo on CPU, NCCL on GPUs); one per process, shared by every caller."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return state().num_processes


def rank() -> int:
    return state().process_index


def is_main() -> bool:
    return state().is_main_process


def barrier() -> None:
    """Every process waits here for the others (a no-op in one process)."""
    state().wait_for_everyone()


def shutdown(ok: bool) -> None:
    """Leave the process group at the end of a launched command, so gloo's threads are torn down before the
    interpreter exits (left to exit, a rank can abort with "terminate called without an active exception"
    after its work is done). After success the ranks first meet, so none tears down while a peer still talks
    to it; after an error no barrier (the other ranks may never arrive). A no-op in one process."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        try:
            if ok:
                torch_dist.barrier()
        finally:
            torch_dist.destroy_process_group()


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start indices of this process's batches among the fixed slices [0:bs], [bs:2bs], ... of n items."""
    starts = range(0, n, max(batch_size, 1))
    return [s for b, s in enumerate(starts) if b % world_size() == rank()]


def gather_rows(rows: dict[int, object], n: int) -> list:
    """Each process's {index: value} -> every process gets the values of indices 0..n-1, in order."""
    if world_size() > 1:
        from accelerate.utils import gather_object

        merged: dict[int, object] = {}
        for part in gather_object([rows]):
            merged.update(part)
        rows = merged
    missing = [i for i in range(n) if i not in rows]
    if missing:
        raise RuntimeError(f"gather_rows: no process computed rows {missing[:5]} (of {n}); the shares must cover all")
    return [rows[i] for i in range(n)]


def main_first(exists: bool) -> bool:
    """``exists`` as the main process saw it, on every process, before anyone goes on.

    A check like "is this file already there?" must come out the same on every process, or some would
    skip a step the others run collectively (and wait forever)."""
    if world_size() == 1:
        return exists
    from accelerate.utils import broadcast_object_list

    box = [exists]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])


def main_process_first():
    """A context where the main process runs first and the others after it: for steps that build a
    shared cache (converted weights, the text teacher) that the others then just load."""
    return state().main_process_first()
