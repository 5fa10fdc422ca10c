"""Training on several processes: ``torchrun --nproc-per-node N -m styletx.cli train ...``.

torchrun starts N copies of the same command and tells each its rank through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...). ``setup`` joins them into one process group
(NCCL on CUDA, one GPU per process; gloo on CPU), and then:

* every rank starts from rank 0's weights and buffers (a broadcast);
* each rank draws its own shard of the data each epoch (``styletx.engine.data.CropSampler``);
* the networks each optimizer trains are wrapped together in one DistributedDataParallel
  module, and the translator runs that optimizer's forward pass through it
  (``Translator.forward_for``), so the backward pass averages their gradients over the ranks.
  One wrapper per optimizer, not per network, because a GAN step calls its networks several
  times, in separate backward passes for generators and discriminators, and uses frozen
  networks (a discriminator in the generators' loss) that must not be synchronised then;
* batch norm becomes synchronised batch norm on CUDA (``torch.nn.SyncBatchNorm`` supports only
  GPUs); on CPU each rank normalises its own batch, and DDP hands rank 0's running statistics
  to every rank at each forward (``broadcast_buffers``);
* only rank 0 prints, writes previews, logs and checkpoints.

A checkpoint holds no trace of the number of processes, so a run can resume with any number.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import gc
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from styletx.contract.errors import StyletxError, UsageError, one_line

if TYPE_CHECKING:
    from styletx.contract.interfaces import Translator

log = logging.getLogger("styletx")
TIMEOUT = datetime.timedelta(minutes=30)  # a checkpoint or preview on rank 0 may take a while
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # a training process's exit on a signal
STOP_GRACE = 30.0  # s: after one process failed, the others' time to end before SIGKILL
LAUNCHER = "STYLETX_LAUNCHER_PID"  # set by `--nproc`'s launcher in each training process
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Group:
    """This process's place among the training processes (a single process: rank 0 of 1)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0,
                 joined: bool | None = None):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        # torchrun's processes join a process group even when there is one of them (a 1-GPU
        # job is then the same DDP / NCCL job as an 8-GPU one); a plain process does not.
        self.joined = size > 1 if joined is None else joined
        self.distributed: Translator | None = None  # the translator whose networks DDP wraps

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.joined

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

    def distribute(self, translator: Translator, device: torch.device) -> None:
        """Wrap the networks each optimizer trains in one DistributedDataParallel module, which
        ``translator.forward_for`` runs the optimizer's forward pass through: the backward pass
        that follows then averages their gradients over the ranks (bucketed all-reduces
        overlapped with the backward) and the forward uses rank 0's buffers. Every optimizer
        step checks that its forward pass went that way, so a translator that does not use
        ``forward_for`` stops with a clear error instead of letting the ranks drift apart.
        Call after ``configure_optimizers`` and the speed options (compile, channels-last)."""
        if not self.active:
            return
        networks = translator.networks()
        wrappers = {}
        for name, optimizer in translator.optimizers.items():
            step = _StepForward(_networks_trained_by(translator.name, name, optimizer, networks))
            wrappers[name] = DistributedDataParallel(
                step, device_ids=[device.index] if device.type == "cuda" else None)
            optimizer.register_step_pre_hook(_require_forward_for(translator.name, name, step))
        translator.context = dataclasses.replace(translator.context,
                                                 wrappers=MappingProxyType(wrappers))
        self.distributed = translator
        if self.is_main:
            log.info("training on %d process(es): DistributedDataParallel over %s", self.size,
                     dist.get_backend())

    # -- agreement ----------------------------------------------------------------------------
    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. Ctrl-C reached one process)."""
        return self.any_each([flag], device)[0]

    def any_each(self, flags: list[bool], device: torch.device,
                 number: int | None = None) -> list:
        """``any`` of each flag, in one exchange; with ``number`` (a count >= 0 that only
        rank 0 gives, the others 0), rank 0's count on every rank after the flags."""
        values = [float(flag) for flag in flags] + ([] if number is None else [float(number)])
        if self.active:
            value = torch.tensor(values, dtype=torch.float64, device=device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            values = value.tolist()
        agreed = [bool(v) for v in values[:len(flags)]]
        return agreed if number is None else [*agreed, int(values[-1])]

    def broadcast(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (sent from ``device``: NCCL sends only GPU
        tensors), on the tensor's own device."""
        if not self.active:
            return tensor
        sent = tensor.to(device)
        dist.broadcast(sent, 0)
        return sent.to(tensor.device)

    def finish(self) -> None:
        """Leave the process group once every rank is done, and free it while Python is
        whole. The DDP wrappers go first: they hold the group, which would otherwise outlive
        ``destroy_process_group`` and be torn down with the interpreter at exit, where a rank
        could now and then abort ("terminate called without an active exception") and
        torchrun report a finished run as failed."""
        if not (self.active and dist.is_initialized()):
            return
        dist.barrier()
        if self.distributed is not None:
            self.distributed.context = dataclasses.replace(self.distributed.context,
                                                           wrappers=MappingProxyType({}))
            self.distributed = None
            gc.collect()  # the wrappers and their reducers, now, while Python is whole
        dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """torchrun started this process (also as a job of one process: torchrun names its run
    in TORCHELASTIC_RUN_ID), or another launcher started several with WORLD_SIZE."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return size > 1 or ("WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ)


PEER_GONE = ("Connection closed by peer", "Connection reset by peer")  # what gloo says


def lost_a_process(exc: BaseException) -> str | None:
    """Why a collective operation failed, in a few words, if another training process is gone
    (gloo raises a RuntimeError of several lines saying "Connection closed by peer"); None
    for any other error."""
    if not isinstance(exc, RuntimeError):
        return None
    said = [words for words in PEER_GONE if words in str(exc)]
    if said:
        return said[0]
    return one_line(exc, limit=200) if isinstance(exc, dist.DistError) else None


def rank_from_environment() -> int:
    """This process's rank among torchrun's training processes (0 when alone), known before
    the process group is set up."""
    return int(os.environ.get("RANK", "0"))


def setup(device: str) -> tuple[Group, str]:
    """Join the process group that torchrun set up (nothing to do in a single process), and
    pick this rank's device: with CUDA, GPU LOCAL_RANK. Returns the group and the device."""
    if not launched_by_torchrun():
        return Group(), device
    _stop_with_the_launcher()
    rank, size = rank_from_environment(), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        # DistributedDataParallel imports torch.distributed.nn on first use, whose functions
        # take the default group as a default argument value: imported after the group is made,
        # they would hold it until the interpreter exits, past destroy_process_group (finish)
        importlib.import_module("torch.distributed.nn")
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return Group(rank, size, local_rank, joined=True), device


def _stop_with_the_launcher() -> None:
    """In a process `--nproc`'s launcher started: a SIGTERM (stop after the step, rank 0 saves)
    when the launcher dies, so that a `kill -9` of it leaves nothing training on its own
    (Linux; elsewhere, as under torchrun, the processes finish on their own)."""
    launcher = os.environ.get(LAUNCHER)
    if launcher is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(launcher):  # it died before the request was made
        raise StyletxError("the styletx command that started this training process has "
                           "stopped; nothing was trained")


def _swap_in_sync_batch_norm(net: nn.Module) -> None:
    """Replace the batch-norm layers inside ``net`` by SyncBatchNorm, keeping their weights and
    running statistics (``convert_sync_batchnorm`` on each child, so ``net`` itself stays the
    same object the translator holds)."""
    for name, child in net.named_children():
        setattr(net, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))


class _StepForward(nn.Module):
    """The networks one optimizer trains, as the single module DistributedDataParallel wraps.
    Its forward runs the translator's own forward pass (any function of those networks, called
    directly): DDP only needs a forward through it to arm its gradient hooks for the backward
    pass, and to hand out rank 0's buffers. A GAN step calls its networks several times and
    in several combinations, which this covers without changing the networks."""

    def __init__(self, networks: list[nn.Module]):
        super().__init__()
        self.networks = nn.ModuleList(networks)  # a module listed twice counts once
        self.calls = 0

    def forward(self, forward: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        return forward(*args)


def _networks_trained_by(translator: str, name: str, optimizer: torch.optim.Optimizer,
                         networks: dict[str, nn.Module]) -> list[nn.Module]:
    """The networks whose parameters ``optimizer`` updates; their trainable parameters must be
    exactly its parameters, since DDP averages every trainable parameter of the module it
    wraps."""
    params = {p for group in optimizer.param_groups for p in group["params"]}
    chosen = [net for net in networks.values() if any(p in params for p in net.parameters())]
    if {p for net in chosen for p in net.parameters() if p.requires_grad} != params:
        raise UsageError(f"the {translator} translator cannot train on several processes: its "
                         f"{name!r} optimizer must update whole networks of networks(), every "
                         f"parameter of each")
    return chosen


def _require_forward_for(translator: str, name: str, step: _StepForward) -> Callable:
    """An optimizer step pre-hook: the step's forward pass went through ``forward_for``."""

    def check(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if step.calls == 0:
            raise UsageError(
                f"the {translator} translator cannot train on several processes: it stepped its "
                f"{name!r} optimizer without running the forward pass through "
                f"forward_for({name!r}, ...), so the gradients were not averaged (see "
                f"'Several processes' in docs/plugins.md)")
        step.calls = 0

    return check


# -- one machine, N processes (`styletx train --nproc N`) ---------------------------------------
def launch(args: list[str], nproc: int, env: dict[str, str]) -> int:
    """Run ``python -m styletx.cli ARGS`` as ``nproc`` training processes on this machine, with
    the environment ``torchrun --standalone --nproc-per-node N`` gives them; their exit status.

    A SIGINT or SIGTERM sent to this process alone (``kill PID``, ``timeout``, an IDE's stop
    button) reaches every training process once, so they stop after the step and save;
    torchrun behind ``subprocess.call`` left them training on their own. Each runs in a session
    of its own, so that a terminal's Ctrl-C, which signals the whole foreground process group,
    reaches it once, through here (twice stops it at once, without saving); a SIGHUP (the
    terminal closed) reaches it as a SIGTERM; a Ctrl-Z (SIGTSTP) pauses every one with this
    one, and they go on together when this one is continued (``fg``, ``bg``). Should this
    process be killed outright, each gets a SIGTERM (``_stop_with_the_launcher``). A process that
    fails leaves the others waiting for it in a collective operation: they get a SIGTERM (stop
    after the step), and SIGKILL STOP_GRACE seconds later. The status is the first failure's,
    else rank 0's (0, or 130 / 143 after a signal)."""
    common = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
              "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
              "TORCHELASTIC_RUN_ID": f"styletx-{os.getpid()}", LAUNCHER: str(os.getpid())}
    processes: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, frame) -> None:  # a closed terminal (SIGHUP): stop as after SIGTERM
        received.append(signal.SIGTERM if signum == signal.SIGHUP else signum)
        _signal_all(processes, received[-1])

    def pause(signum, frame) -> None:  # Ctrl-Z: every process stops until `fg` / `bg`
        _signal_all(processes, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once continued
        _signal_all(processes, signal.SIGCONT)

    handlers = {signal.SIGINT: forward, signal.SIGTERM: forward, signal.SIGHUP: forward,
                signal.SIGTSTP: pause}
    previous = {number: signal.signal(number, handler)  # one ignored (SIGINT in a background
                for number, handler in handlers.items()  # job) stays so
                if signal.getsignal(number) is not signal.SIG_IGN}
    try:
        for rank in range(nproc):
            if received:  # stopped while starting: the others would wait for the missing rank
                _signal_all(processes, signal.SIGKILL)  # before any step: nothing to save
                _wait_for(processes)
                return 128 + received[0]
            processes.append(subprocess.Popen(  # a session of its own: out of the terminal's
                [sys.executable, "-m", "styletx.cli", *args], start_new_session=True,  # group
                env={**common, "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0"}))
        status = _wait_for(processes)
        if received and all(process.returncode < 0 for process in processes):
            # stopped while they read the data, before their own handlers: they said nothing
            log.warning("the training processes were stopped by %s before training began; "
                        "nothing was trained", signal.Signals(received[0]).name)
        return status
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for process in processes:  # only after an error of this launcher itself
            if process.poll() is None:
                process.kill()


def _wait_for(processes: list[subprocess.Popen]) -> int:
    failure: int | None = None
    kill_at = float("inf")
    while [process for process in processes if process.poll() is None]:  # polls every one
        if failure is None:
            failed = [(rank, process.returncode) for rank, process in enumerate(processes)
                      if process.returncode not in (None, 0, *STOPPED)]
            if failed:  # one killed first: it is the cause (the others' errors say it is gone)
                rank, failure = min(failed, key=lambda item: item[1] >= 0)
                if failure < 0:  # killed, so it could not say why (a process says its errors)
                    log.warning("training process %d was killed by %s", rank,
                                signal.Signals(-failure).name)
                    failure = 128 - failure  # the shell's convention
                # a first SIGTERM only asks to stop after the step: one saving its last steps
                # on its way out (it saw the other go) goes on; one blocked is killed later
                _signal_all(processes, signal.SIGTERM)
                kill_at = time.monotonic() + STOP_GRACE
        if time.monotonic() >= kill_at:
            _signal_all(processes, signal.SIGKILL)
            kill_at = float("inf")
        time.sleep(0.1)
    if failure is not None:
        return failure
    code = processes[0].returncode  # one killed by a signal (say, a SIGTERM forwarded while
    return 128 - code if code < 0 else code  # it started): the shell's 143, not exit(-15)


def _signal_all(processes: list[subprocess.Popen], number: int) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(number)


def _free_port() -> int:
    """A TCP port free on this machine now, for rank 0's rendezvous (as torchrun's
    --standalone picks one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
