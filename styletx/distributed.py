"""Training on several processes: ``torchrun --nproc-per-node N -m styletx.cli train ...``.

torchrun starts N copies of the same command and tells each its rank through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...). ``setup`` joins them into one process group
(NCCL on CUDA, one GPU per process; gloo on CPU), and then:

* every rank starts from rank 0's weights and buffers (a broadcast, as DistributedDataParallel
  does when it wraps a module);
* each rank draws its own shard of the data each epoch (``styletx.data.CropSampler``);
* gradients are averaged over the ranks before every optimizer step. This is the all-reduce
  DistributedDataParallel performs, done at the optimizers instead of inside a module wrapper:
  a GAN translator calls its networks several times per step, in several backward passes, and
  through containers (vaegan's encoders share modules), which a per-module wrapper would have
  to see. Hooking the optimizers keeps every translator, third-party ones included, unchanged;
* batch norm becomes synchronised batch norm on CUDA (``torch.nn.SyncBatchNorm`` supports only
  GPUs); on CPU each rank normalises its own batch and the running statistics are rank 0's,
  broadcast after every step as DistributedDataParallel's ``broadcast_buffers`` does;
* only rank 0 prints, writes previews, logs and checkpoints.

A checkpoint holds no trace of the number of processes, so a run can resume with any number.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = datetime.timedelta(minutes=30)  # a checkpoint or preview on rank 0 may take a while


class Group:
    """This process's place among the training processes (a single process: rank 0 of 1)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0):
        self.rank, self.size, self.local_rank = rank, size, local_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    # -- models -------------------------------------------------------------------------------
    def prepare(self, networks: dict[str, nn.Module], device: torch.device) -> None:
        """Synchronised batch norm on CUDA, and rank 0's weights and buffers everywhere.
        Call before the optimizers are made (the batch-norm swap replaces modules)."""
        if not self.active:
            return
        if device.type == "cuda":
            for net in networks.values():
                _swap_in_sync_batch_norm(net)
        for net in networks.values():
            for tensor in [*net.parameters(), *net.buffers()]:
                dist.broadcast(tensor.data, 0)

    def average_gradients(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Before every step of these optimizers, replace each gradient by its mean over the
        ranks (one all-reduce of all the optimizer's gradients, flattened)."""
        if not self.active:
            return
        for optimizer in optimizers.values():
            optimizer.register_step_pre_hook(self._average_hook)

    def _average_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(mean.view_as(grad))

    def share_buffers(self, networks: dict[str, nn.Module]) -> None:
        """Rank 0's buffers (batch norm's running statistics) on every rank."""
        if not self.active:
            return
        for net in networks.values():
            for buffer in net.buffers():
                dist.broadcast(buffer.data, 0)

    # -- agreement ----------------------------------------------------------------------------
    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. Ctrl-C reached one process)."""
        if not self.active:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (sent from ``device``: NCCL sends only GPU
        tensors), on the tensor's own device."""
        if not self.active:
            return tensor
        sent = tensor.to(device)
        dist.broadcast(sent, 0)
        return sent.to(tensor.device)

    def finish(self) -> None:
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> tuple[Group, str]:
    """Join the process group that torchrun set up (nothing to do in a single process), and
    pick this rank's device: with CUDA, GPU LOCAL_RANK. Returns the group and the device."""
    if not launched_by_torchrun():
        return Group(), device
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return Group(rank, size, local_rank), device


def _swap_in_sync_batch_norm(net: nn.Module) -> None:
    """Replace the batch-norm layers inside ``net`` by SyncBatchNorm, keeping their weights and
    running statistics (``convert_sync_batchnorm`` on each child, so ``net`` itself stays the
    same object the translator holds)."""
    for name, child in net.named_children():
        setattr(net, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
