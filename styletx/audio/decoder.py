"""Small learned corrections along time: the mel -> linear-magnitude decoder (in the spirit of
Tacotron's post-net) and the voice translator's post-filter.

A mel spectrogram has far fewer bands than the STFT has bins (128 against 513 by default; 80
before styletx 0.2, too few to tell harmonics apart above ~1 kHz), so its pseudo-inverse
smears the harmonics, and Griffin-Lim cannot find a consistent phase for a smeared magnitude:
the voice sounds buzzy. ``MelToLinear`` is a small 1-D convolutional network along
time that predicts the log-linear magnitude from the normalised log-mel, as a correction on
top of the pseudo-inverse (its last layer starts at zero, so an untrained network *is* the
pseudo-inverse). ``fit_mel_decoder`` trains one on a voice's own recordings in seconds; the
mel encoder does that in ``fit`` and keeps the weights with its statistics in the run.

The same network, fitted with ``fit_correction`` on other pairs, is the voice CycleGAN's
post-filter: a correction of the generator's output spectrogram, fitted after training on the
cycle's reconstructions of the target voice's own recordings (``styletx.plugins.cyclegan``).
``MelToLinear`` is ``FrameCorrection``'s name in the decoder's role.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["FrameCorrection", "MelToLinear", "fit_correction", "fit_mel_decoder", "l1_loss",
           "training_steps"]

log = logging.getLogger("styletx")

WIDTH = 128  # channels of the hidden layers
LAYERS = 3  # convolutions before the output layer
KERNEL = 5  # frames each convolution sees (receptive field 1 + LAYERS * (KERNEL - 1) = 13)
SEGMENT = 32  # frames per training example
BATCH = 16  # examples per step
MAX_STEPS = 1000  # however long the recordings (~40 s on one core)
LR = 3e-3  # Adam; halved at 50 % and 75 % of the steps
LOG_LOSS_FLOOR = float(np.log(1e-4))  # log magnitudes are clamped here in the loss: below it
#                                       is silence, whatever its exact level
GRAD_CLIP = 1.0  # largest gradient norm of a step
LOG_TIMES = 4  # progress lines per fit
SEED = 0  # the fit is deterministic: the same recordings give the same network


class FrameCorrection(nn.Module):
    """``(N, n_in, T)`` -> ``(N, n_out, T)``: a correction to add to something the caller has
    (the decoder: ``(N, n_mels, T)`` normalised log-mel -> correction to the pseudo-inverse's
    log-linear magnitude). Its last layer starts at zero, so an unfitted one corrects nothing."""

    def __init__(self, n_in: int, n_out: int, width: int = WIDTH, layers: int = LAYERS,
                 kernel: int = KERNEL):
        super().__init__()
        hidden: list[nn.Module] = []
        for i in range(layers):
            hidden += [nn.Conv1d(n_in if i == 0 else width, width, kernel, padding=kernel // 2),
                       nn.LeakyReLU(0.2)]
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Conv1d(width, n_out, 1)
        self.reset()  # starts as no correction: never worse at first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))

    def reset(self) -> None:
        """No correction again: the output layer back to zero."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> FrameCorrection:
        """The network a ``state_dict`` of this class describes (sizes read from its
        tensors), with those weights."""
        first = state["hidden.0.weight"]  # (width, n_mels, kernel)
        layers = sum(1 for k in state if k.startswith("hidden.") and k.endswith(".weight"))
        net = cls(first.shape[1], state["out.weight"].shape[0], first.shape[0], layers,
                  first.shape[2])
        net.load_state_dict(state)
        return net


MelToLinear = FrameCorrection


def training_steps(frames: int, epochs: float) -> int:
    """Steps that show the network ``frames`` frames ``epochs`` times, at least one and at
    most ``MAX_STEPS``: the fit's time follows the amount of audio (seconds of it: a second)
    up to a cap (an hour of it costs no more than ten minutes)."""
    return int(min(MAX_STEPS, max(1, round(epochs * frames / (BATCH * SEGMENT)))))


def fit_mel_decoder(normalised_mel: np.ndarray, log_pinv: np.ndarray, log_linear: np.ndarray,
                    steps: int, name: str = "mel decoder") -> FrameCorrection:
    """A decoder trained for ``steps`` so that ``log_pinv + net(normalised_mel)`` matches
    ``log_linear``.

    Args:
        normalised_mel: ``(n_mels, frames)`` the encoder's tensors, recordings concatenated.
        log_pinv: ``(n_linear, frames)`` log of the pseudo-inverse of the same frames.
        log_linear: ``(n_linear, frames)`` log of their true STFT magnitude.
        steps: training steps (each ``BATCH`` random ``SEGMENT``-frame crops).

    The loss is the two terms of the usual multi-resolution STFT loss at one resolution: L1 of
    the log magnitudes (the quiet detail) plus spectral convergence (the loud harmonics).
    """
    return fit_correction(normalised_mel, log_pinv, np.maximum(log_linear, LOG_LOSS_FLOOR),
                          steps, _stft_loss, name)


def fit_correction(inputs: np.ndarray, base: np.ndarray, targets: np.ndarray, steps: int,
                   loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   name: str) -> FrameCorrection:
    """A ``FrameCorrection`` trained for ``steps`` Adam steps so that ``base + net(inputs)``
    matches ``targets`` by ``loss(predicted, targets)``; all three ``(channels, frames)``,
    recordings concatenated. On one CPU thread, whatever torch's setting: its convolutions are
    too small to gain from a second thread, and on cores busy with other work two threads took
    15-20x as long as one (100 steps: 38-48 s against 2.5 s, measured on 2 shared cores). One
    thread also makes the result the same for every ``--threads``; the RNG (CPU and CUDA) is
    left as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return _fit(*(torch.from_numpy(np.ascontiguousarray(a, np.float32))
                          for a in (inputs, base, targets)), steps, loss, name)
    finally:
        torch.set_num_threads(threads)


def _fit(inputs: torch.Tensor, base: torch.Tensor, targets: torch.Tensor, steps: int,
         loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
         name: str) -> FrameCorrection:
    segment = min(SEGMENT, inputs.shape[1])
    starts = np.random.default_rng(SEED).integers(0, inputs.shape[1] - segment + 1,
                                                  (steps, BATCH))
    torch.random.default_generator.manual_seed(SEED)  # the CPU's only: torch.manual_seed
    net = FrameCorrection(inputs.shape[0], base.shape[0])  # would reseed CUDA's too
    optimiser = torch.optim.Adam(net.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, [steps // 2, 3 * steps // 4], 0.5)
    started, losses = time.perf_counter(), []
    report_at = {round(steps * k / LOG_TIMES) for k in range(1, LOG_TIMES + 1)}
    for step, batch_starts in enumerate(starts, 1):
        crop = [slice(int(s), int(s) + segment) for s in batch_starts]
        x, b, y = (torch.stack([a[:, c] for c in crop]) for a in (inputs, base, targets))
        value = loss(b + net(x), y)
        optimiser.zero_grad()
        value.backward()
        nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)  # one odd batch must not
        optimiser.step()                                         # throw the fit off
        schedule.step()
        losses.append(value.item())
        if step in report_at:
            log.info("%s: step %d/%d, loss %.3f (%.0f s)", name, step, steps,
                     float(np.mean(losses[-50:])), time.perf_counter() - started)
    return net.eval()


def l1_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (the post-filter's loss, on normalised log spectrograms)."""
    return (predicted - target).abs().mean()


def _stft_loss(log_predicted: torch.Tensor, log_target: torch.Tensor) -> torch.Tensor:
    """L1 of the log magnitudes + spectral convergence of the linear ones."""
    # exp of a wild early prediction would overflow the convergence term: cap it a little
    # above the loudest target
    predicted = log_predicted.clamp(max=float(log_target.max()) + 1).exp()
    target = log_target.exp()
    convergence = torch.linalg.norm(predicted - target) / torch.linalg.norm(target)
    return (log_predicted.clamp(min=LOG_LOSS_FLOOR) - log_target).abs().mean() + convergence
