"""A host's ``dist.destroy_process_group()`` that cannot deadlock on torch's GIL (torch < 2.8).

torch before pytorch/pytorch#154976 (merged 2025-06) frees a ``ProcessGroup`` while holding the GIL, and the
group's gloo backend joins its worker threads on the way. A worker can still be dropping a finished collective
(``broadcast_object_list``'s tensors, say) when Python has already moved on: Python let go of those tensors, so
their Python objects now belong to the C++ tensors, and freeing them needs the GIL. The worker waits for the GIL,
the main thread waits for the worker: ``destroy_process_group()`` never returns. Seen about once in a hundred runs
on loaded cores, with no vLLM and no shim in the process (the pg tier's host ranks, torch 2.6 and 2.3).

A gloo backend (``ProcessGroupGloo``) releases the GIL in its own destructor. Holding the backends while the
groups go makes freeing a group only drop a reference; the backends then end last, with the GIL released, so a
worker that still needs it gets it.
"""
from __future__ import annotations

DEVICES = ("cpu", "cuda")


def destroy_process_groups() -> None:
    """``torch.distributed.destroy_process_group()`` of this world, its groups' backends ended last."""
    import torch.distributed as dist

    backends = _backends()
    dist.destroy_process_group()
    backends.clear()


def _backends() -> list:
    """Every backend of this world's groups (a frame of its own: no group outlives the call through a local)."""
    import torch
    import torch.distributed.distributed_c10d as c10d

    backends = []
    for group in list(c10d._world.pg_map):
        for device in DEVICES:
            try:
                backends.append(group._get_backend(torch.device(device)))
            except RuntimeError:  # the group has no backend for this device
                continue
    return backends
