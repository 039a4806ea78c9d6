"""The process group of a torchrun training (configs/multi_gpu_train.json): started once, torn down for real.

Why not just ``dist.init_process_group`` / ``dist.destroy_process_group`` as model-zoo bundles do: with DDP on gloo
(torch 2.13) ``destroy_process_group`` leaves the group alive, its gloo threads (``gloo_tcp_loop``,
``pt_gloo_runloop``) still running, because two things keep references to it:

- ``torch.distributed.nn.functional``, first imported while DDP is constructed (through
  ``torch.distributed._shard``), takes ``group.WORLD`` as the default argument of its functions; imported after the
  group exists, those defaults hold the group until exit;
- the DDP module's ``reducer``, ``logger`` and ``process_group`` attributes, for as long as the config holds the
  network.

The gloo threads then still run when the process exits, and a rank sometimes died in C++ teardown (SIGABRT,
"terminate called without an active exception", what a still-joinable ``std::thread`` destroyed at exit gives;
torchrun then exits 1 although training had finished). Measured on this 2-core machine under CPU load, with the
schedule of tests/test_folds_and_ddp.py: 3 of 20 torchrun runs failed with the model-zoo teardown, 1 of 16 with a
barrier before it, 0 of 30 with these two functions, whose groups leave no gloo thread behind (checked there).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def init_process_group() -> None:
    """Start the default process group of this torchrun rank: NCCL where CUDA is available, else gloo.

    Reads torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Imports
    ``torch.distributed.nn`` first, so that its functions' default group is None (the default group, looked up
    at call time) instead of a reference that keeps this group alive. Starts nothing if a group already exists
    (the import then comes too late to help).
    """
    import torch.distributed.nn  # noqa: F401  (before the group exists: see the module docstring)

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def destroy_process_group(network: torch.nn.Module | None = None) -> None:
    """Wait for every rank, release what ``network`` (a DistributedDataParallel) holds of the group, destroy it.

    The barrier keeps a rank from tearing down while its peers still work (rank 0 saves the last checkpoint,
    the sidecar and the curves). DDP's ``reducer``, ``logger`` and ``process_group`` are dropped: after training
    the wrapper is only used for its ``module`` (the weights were saved from it already). Afterwards the group
    has no reference left, so destroying it joins its threads here, while Python still runs. Does nothing when
    no group exists. ``monai.bundle run`` calls finalize only after a run that returned: a rank whose training
    raised exits without it (torchrun then stops the others), so nothing waits at this barrier for a dead peer.
    On NCCL the barrier names this rank's current CUDA device (set in initialize).
    """
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        for name in ("reducer", "logger", "process_group"):
            if hasattr(network, name):
                delattr(network, name)
    dist.destroy_process_group()
