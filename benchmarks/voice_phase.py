"""A learned phase for the voice decoder (issue 18's "Vocos-style" candidate), measured.

Vocos and APNet predict each STFT frame's magnitude and phase from the mel spectrogram and
invert with one inverse STFT, no Griffin-Lim. Here the magnitude is the `mel` encoder's own
(the learned decoder, fitted on B as a run fits it) and a small ConvNeXt network, trained from
scratch on B's recordings, predicts the phase: APNet's anti-wrapped phase losses (the phase,
its difference along frequency: group delay, and along time: instantaneous frequency) plus a
multi-resolution STFT loss of the resulting wave. The round trip of B's held-out sentences is
then measured three ways: the predicted phase alone (one inverse STFT), and the predicted phase
as Griffin-Lim's start for 16 and 64 iterations (against the random start styletx uses).

    python benchmarks/voice_phase.py --data /tmp/voice-real --steps 2000

The data is voice_real.py's (it renders it when missing); the measures are its PESQ-WB, STOI
and DNSMOS (the ``bench`` extra). One thread.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import voice_real
from torch import nn

SEGMENT, BATCH, LR = 32, 16, 2e-3  # frames per example, examples per step, AdamW peak rate
RESOLUTIONS = (512, 1024, 2048)  # FFT sizes of the wave's STFT loss (hop: a quarter)


class ConvNeXtBlock(nn.Module):
    """Vocos's block along time: depthwise conv 7, LayerNorm, 3x pointwise MLP, layer scale."""

    def __init__(self, width: int, scale: float):
        super().__init__()
        self.depthwise = nn.Conv1d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 3 * width), nn.Linear(3 * width, width)
        self.scale = nn.Parameter(torch.full((width,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(nn.functional.gelu(self.up(self.norm(self.depthwise(x).transpose(1, 2)))))
        return x + (self.scale * y).transpose(1, 2)


class PhaseNet(nn.Module):
    """``(N, n_mels, T)`` normalised log-mel and ``(N, F, T)`` log magnitude -> ``(N, F, T)``
    phase, as APNet: the angle of two linear outputs (real and imaginary parts)."""

    def __init__(self, n_mels: int, bins: int, width: int = 128, blocks: int = 4):
        super().__init__()
        self.inp = nn.Conv1d(n_mels + bins, width, 7, padding=3)
        self.norm, self.out_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(width, 1 / blocks) for _ in range(blocks)])
        self.real, self.imag = nn.Linear(width, bins), nn.Linear(width, bins)

    def forward(self, mel: torch.Tensor, log_magnitude: torch.Tensor) -> torch.Tensor:
        x = self.inp(torch.cat([mel, log_magnitude], 1))
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.out_norm(self.blocks(x).transpose(1, 2))
        return torch.atan2(self.imag(x), self.real(x)).transpose(1, 2)


def stft(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    return torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), center=True,
                      pad_mode="constant", return_complex=True)


def anti_wrapped(x: torch.Tensor) -> torch.Tensor:
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


def phase_loss(phase: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """APNet's three: the phase, group delay and instantaneous frequency, anti-wrapped."""
    return (anti_wrapped(phase - true).mean()
            + anti_wrapped(torch.diff(phase, dim=1) - torch.diff(true, dim=1)).mean()
            + anti_wrapped(torch.diff(phase, dim=2) - torch.diff(true, dim=2)).mean())


def wave_loss(wave: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1 at each of ``RESOLUTIONS``."""
    total = torch.zeros(())
    for n_fft in RESOLUTIONS:
        x, y = stft(wave, n_fft, n_fft // 4).abs(), stft(true, n_fft, n_fft // 4).abs()
        total = total + (torch.linalg.norm(y - x) / torch.linalg.norm(y)
                         + (torch.log(x + 1e-5) - torch.log(y + 1e-5)).abs().mean())
    return total


class Features:
    """A fitted `mel` encoder's view of a wave: normalised mel, its decoder's magnitude and
    the true complex STFT."""

    def __init__(self, encoder):
        self.encoder, p = encoder, encoder.params
        self.n_fft, self.hop = p["n_fft"], p["hop"]

    def __call__(self, wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        spec = stft(torch.from_numpy(wave), self.n_fft, self.hop)
        log_mel = enc._log_mel(spec.abs().numpy())
        mel = (log_mel - enc.mean[:, None]) / enc.std[:, None]
        magnitude = enc.linear_magnitude(log_mel)
        return (torch.from_numpy(mel.astype(np.float32)),
                torch.from_numpy(magnitude.astype(np.float32)), spec)


def train(features: Features, waves: list[np.ndarray], steps: int) -> PhaseNet:
    mel, magnitude, spec = (torch.cat(parts, 1) for parts in zip(*map(features, waves)))
    log_magnitude = magnitude.clamp(min=1e-5).log()
    torch.manual_seed(0)
    net = PhaseNet(mel.shape[0], magnitude.shape[0])
    optimiser = torch.optim.AdamW(net.parameters(), lr=LR, betas=(0.8, 0.99))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, LR, total_steps=steps,
                                                   pct_start=0.05)
    rng, started, losses = np.random.default_rng(0), time.perf_counter(), []
    window, length = torch.hann_window(features.n_fft), (SEGMENT - 1) * features.hop
    for step in range(1, steps + 1):
        starts = rng.integers(0, mel.shape[1] - SEGMENT + 1, BATCH)
        m, lm, mag, true = (torch.stack([a[:, s:s + SEGMENT] for s in starts])
                            for a in (mel, log_magnitude, magnitude, spec))
        phase = net(m, lm)
        waves = [torch.istft(s, features.n_fft, features.hop, window=window, center=True,
                             length=length) for s in (torch.polar(mag, phase), true)]
        loss = phase_loss(phase, true.angle()) + wave_loss(*waves)
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == steps:
            print(f"step {step}/{steps}: loss {np.mean(losses[-200:]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return net.eval()


def decode(net: PhaseNet | None, features: Features, wave: np.ndarray, n_iter: int) -> np.ndarray:
    """The round trip: Griffin-Lim from the predicted phase (``n_iter`` 0: the inverse STFT of
    it alone), or from styletx's random start without ``net``."""
    from styletx.audio.dsp import griffinlim

    mel, magnitude, _ = features(wave)
    kwargs = {}
    if net is not None:
        with torch.no_grad():
            kwargs["init_phase"] = net(mel[None], magnitude.clamp(min=1e-5).log()[None])[0].numpy()
    return griffinlim(magnitude.numpy(), features.n_fft, features.hop, n_iter=n_iter,
                      length=len(wave), **kwargs)


def main() -> None:
    import librosa

    from styletx.plugins.audio import AudioDomain, MelEncoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "voice-real")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    voice_real.render_data(args.data)
    voice_real.bench_packages()
    domain = AudioDomain()
    training = [domain.prepare_for_training(domain.load(f), 0)
                for f in sorted((args.data / "b").glob("*.wav"))]
    encoder = MelEncoder()
    encoder.fit(training)
    features = Features(encoder)
    net = train(features, [encoder.resample(s) for s in training], args.steps)
    rate = encoder.params["rate"]
    for name, phase_net, n_iter in [("random start, GL 16", None, 16),
                                    ("random start, GL 64 (styletx)", None, 64),
                                    ("learned phase alone (iSTFT)", net, 0),
                                    ("learned phase, GL 16", net, 16),
                                    ("learned phase, GL 64", net, 64)]:
        rows = []
        for path in sorted((args.data / "test_b").glob("*.wav")):
            wave = encoder.resample(domain.load(path))
            decoded = librosa.resample(np.asarray(decode(phase_net, features, wave, n_iter),
                                                  np.float32), orig_sr=rate,
                                       target_sr=voice_real.RATE)
            rows.append(voice_real.decoder_metrics(voice_real.load(path, voice_real.RATE),
                                                   decoded))
        print(f"{name:<32}" + "".join(f"{k} {v:.3f}  "
                                      for k, v in voice_real.mean_rows(rows).items()), flush=True)


if __name__ == "__main__":
    main()
