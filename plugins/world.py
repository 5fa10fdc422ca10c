"""The ``world`` voice encoder: the WORLD vocoder's spectral envelope, the original CycleGAN-VC
feature set (Morise et al., "WORLD: a vocoder-based high-quality speech synthesis system",
2016; Kaneko & Kameoka, CycleGAN-VC, 2018), through the ``pyworld`` package (``pip install
'styletx[world]'``).

A recording is analysed into three parts, frame by frame (``frame_period`` ms):

- the fundamental frequency F0 (Harvest), 0 where unvoiced;
- the spectral envelope (CheapTrick), coded to ``dims`` mel-cepstrum-like coefficients: the
  tensor the model sees, ``(1, dims, frames)``, normalised per coefficient with the mean and
  spread fitted on the side's training folder;
- the aperiodicity (D4C): how noisy each band is.

A converted envelope is decoded with the *source's* F0 and aperiodicity and synthesised by
WORLD. The F0 is moved by CycleGAN-VC's log-Gaussian transform, ``log f0 -> (log f0 - m_src) /
s_src * s_dst + m_dst``: ``m_dst, s_dst`` are the target side's (this encoder's fitted
statistics), ``m_src, s_src`` the source utterance's own (the decoding encoder knows only its
side). Centres and spreads are medians and scaled median absolute deviations, which Harvest's
occasional octave errors do not move. The vocoder makes the harmonics from the F0 rather than
recovering them from a spectrogram, so a model's blurred output still comes out as a voice;
what the model cannot change is the rhythm and the source's breathiness.

The envelope's level (coefficient 0) is smoothed over ``smooth_energy`` frames before
synthesis. A short-trained model's level flickers from frame to frame out of step with the
syllables, which a listener hears as roughness: on the benchmark's conversions (the ``fast``
preset, 10 minutes) smoothing it over 5 frames (50 ms) raised DNSMOS overall from 1.60 to 2.06
for a speaker similarity of 0.783 against 0.798; smoothing more coefficients raised DNSMOS
further (2.43 with the first four) but cost more similarity (0.742).

Measured (benchmarks/voice_real.py, Festival's real-recording Italian diphone voices, the
round trip with no model, this encoder's defaults): DNSMOS overall 3.00 (male) / 2.71 (female)
unsmoothed and 2.96 / 2.57 with the level smoothed, above the recordings themselves (2.61 /
2.24) and the ``mel`` encoder's round trip (2.28), though PESQ-WB, which compares waveforms, is
1.5-1.6 (the vocoder does not keep the phase). Harvest is the slow part (0.1-0.2 s per second of
audio on one core); Dio, 30x faster, made the male voice's round trip rough (DNSMOS 2.49 against
2.93 at 5 ms, 16 kHz), so it is not offered.

Decoding without the source (training previews) uses a flat F0 at the target's median and the
folder's mean aperiodicity: a monotone voice, for listening to the envelope only.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import numpy as np
import torch

import styletx
from styletx import Encoder, UsageError
from styletx.audio import (
    LEVEL_DB,
    NORMALIZE,
    AudioSample,
    encoding_wave,
    resampled_length,
    scaled_output,
)
from styletx.audio.vocoder import MIN_VOICED, moved_f0, pyworld, robust_log_f0, stretched
from styletx.nn import smooth_time

DEFAULTS = {
    "rate": 22050,  # Hz; every sample is resampled to this
    "frame_period": 10.0,  # ms between frames: round-trip DNSMOS 2.98 / 2.65 at 10 ms
    #                        against 2.93 / 2.47 at 5 ms (male / female, 16 kHz), half the
    #                        frames to analyse and to learn
    "dims": 36,  # coded spectral envelope coefficients (CycleGAN-VC: 36; 60: no better)
    "f0_floor": 71.0,  # Hz: Harvest's search range
    "f0_ceil": 800.0,
    "smooth_energy": 5,  # frames: the decoded envelope's level (its coefficient 0) is smoothed
    #                      over this many frames (a Hann window); 1 = not at all. See below
}
FITTED = ("mean", "std", "log_f0", "aperiodicity")  # the state saved with a run


@dataclasses.dataclass
class Analysis:
    """One recording in WORLD's terms, per frame: F0 (0 where unvoiced), the coded spectral
    envelope ``(frames, dims)`` and the coded aperiodicity ``(frames, bands)``."""

    f0: np.ndarray
    envelope: np.ndarray
    aperiodicity: np.ndarray


# (id of a wave, its rate, the settings) -> (a weak reference to the wave, its analysis)
_ANALYSES: dict[tuple, tuple[weakref.ref, Analysis]] = {}


class WorldEncoder(Encoder):
    """Waveform <-> normalised coded WORLD spectral envelope ``(1, dims, frames)``."""

    name = "world"
    domain = "audio"
    channels = 1
    NORMALIZE = NORMALIZE  # the choices of ``normalize`` (convert --normalize)
    normalize = "loudness"
    defaults = DEFAULTS

    def __init__(self, **params):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise UsageError(f"world encoder: unknown setting {sorted(unknown)[0]!r}")
        super().__init__(**{**DEFAULTS, **params})
        p = self.params
        if (p["rate"] < 8000 or p["frame_period"] <= 0 or p["dims"] < 2
                or not 0 < p["f0_floor"] < p["f0_ceil"] or p["smooth_energy"] < 1):
            raise UsageError(f"world encoder: need rate >= 8000, frame_period > 0, dims >= 2, "
                             f"0 < f0_floor < f0_ceil and smooth_energy >= 1, got {p}")
        self.mean = np.zeros(p["dims"], np.float64)
        self.std = np.ones(p["dims"], np.float64)
        self.log_f0 = np.array([np.log(150.0), 0.2])  # centre and spread over voiced frames
        self.aperiodicity = np.zeros(0)  # the folder's mean coded aperiodicity per band
        self.level_db = LEVEL_DB  # every wave analysed at this speech level, as the spectrogram
        #                           encoders do (sentences 20 / 30 dB quieter than the training
        #                           ones converted 0.5 / 0.75 dB MCD worse, docs/voice.md);
        #                           None: at its own level (runs fitted before it)

    # -- analysis and synthesis --------------------------------------------------------------
    def analyse(self, sample: AudioSample) -> Analysis:
        """The sample's WORLD analysis, computed once per wave and settings: converting encodes
        the source with one side's encoder and decodes with the other's, which needs the
        source's F0 and aperiodicity again, and training fits and then encodes the same
        samples; Harvest is the costly part."""
        p = self.params
        key = (id(sample.wave), sample.rate, self.level_db, *(p[k] for k in sorted(p)))
        cached = _ANALYSES.get(key)
        if cached is not None and cached[0]() is sample.wave:
            return cached[1]
        # at one speech level: the envelope's level follows the recording's gain
        analysis = self._analyse(encoding_wave(sample, p["rate"], self.level_db))
        _ANALYSES[key] = (weakref.ref(sample.wave), analysis)
        weakref.finalize(sample.wave, _ANALYSES.pop, key, None)  # forgotten with the wave
        return analysis

    def _analyse(self, wave: np.ndarray) -> Analysis:
        pw, p = pyworld(), self.params
        x = np.ascontiguousarray(wave, np.float64)
        f0, times = pw.harvest(x, p["rate"], f0_floor=p["f0_floor"], f0_ceil=p["f0_ceil"],
                               frame_period=p["frame_period"])
        envelope = pw.cheaptrick(x, f0, times, p["rate"], f0_floor=p["f0_floor"])
        aperiodicity = pw.d4c(x, f0, times, p["rate"])
        return Analysis(f0, pw.code_spectral_envelope(envelope, p["rate"], p["dims"]),
                        pw.code_aperiodicity(aperiodicity, p["rate"]))

    def synthesise(self, f0: np.ndarray, envelope: np.ndarray,
                   aperiodicity: np.ndarray) -> np.ndarray:
        """Per-frame F0, coded envelope and coded aperiodicity -> a float32 wave."""
        pw, p = pyworld(), self.params
        fft = pw.get_cheaptrick_fft_size(p["rate"], p["f0_floor"])
        envelope = pw.decode_spectral_envelope(np.ascontiguousarray(envelope, np.float64),
                                               p["rate"], fft)
        aperiodicity = pw.decode_aperiodicity(np.ascontiguousarray(aperiodicity, np.float64),
                                              p["rate"], fft)
        return pw.synthesize(np.ascontiguousarray(f0, np.float64), envelope, aperiodicity,
                             p["rate"], p["frame_period"]).astype(np.float32)

    def converted_f0(self, f0: np.ndarray) -> np.ndarray:
        """The source's F0 moved to this side's log-F0 centre and spread (unvoiced stays 0)."""
        if not (f0 > 0).any():
            return f0
        return moved_f0(f0, robust_log_f0(f0), tuple(self.log_f0))

    # -- Encoder interface -------------------------------------------------------------------
    def fit(self, samples: Sequence[AudioSample]) -> None:
        analyses = [self.analyse(s) for s in samples]
        envelopes = np.concatenate([a.envelope for a in analyses])
        self.mean = envelopes.mean(axis=0)
        self.std = np.maximum(envelopes.std(axis=0), 1e-3)
        f0 = np.concatenate([a.f0 for a in analyses])
        if (f0 > 0).sum() >= MIN_VOICED:
            centre, spread = robust_log_f0(f0)
            self.log_f0 = np.array([centre, max(spread, 1e-3)])
        self.aperiodicity = np.concatenate([a.aperiodicity for a in analyses]).mean(axis=0)

    def width_before_fit(self, sample: AudioSample) -> int:
        """Harvest's frames of the wave at ``rate``: one every ``frame_period`` ms, and one more
        (pyworld's ``GetSamplesForHarvest``)."""
        p = self.params
        milliseconds = 1000.0 * resampled_length(sample, p["rate"]) / p["rate"]
        return int(milliseconds / p["frame_period"]) + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {name: torch.from_numpy(np.asarray(getattr(self, name), np.float64))
                 for name in FITTED}
        if self.level_db is not None:
            state["level_db"] = torch.tensor(self.level_db, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in FITTED:
            setattr(self, name, state[name].numpy().astype(np.float64))
        self.level_db = float(state["level_db"]) if "level_db" in state else None

    def encode(self, sample: AudioSample) -> torch.Tensor:
        normalised = (self.analyse(sample).envelope - self.mean) / self.std
        return torch.from_numpy(normalised.T.astype(np.float32))[None]

    def decode(self, tensor: torch.Tensor, like: AudioSample | None = None) -> AudioSample:
        envelope = tensor[0].detach().float().cpu().numpy().astype(np.float64).T
        envelope = envelope * self.std + self.mean
        level = torch.from_numpy(envelope[:, 0].copy())
        envelope[:, 0] = smooth_time(level, self.params["smooth_energy"]).numpy()
        frames = len(envelope)
        if like is not None:
            source = self.analyse(like)
            f0 = stretched(self.converted_f0(source.f0), frames)
            aperiodicity = stretched(source.aperiodicity, frames)
        else:  # a monotone voice at the side's mean pitch (see the module docstring)
            f0 = np.full(frames, np.exp(self.log_f0[0]))
            aperiodicity = np.tile(self._mean_aperiodicity(), (frames, 1))
        wave = self.synthesise(f0, envelope, aperiodicity)
        rate = self.params["rate"]
        if like is not None:  # the source's duration (WORLD gives whole frames)
            length = round(len(like.wave) * rate / like.rate)
            wave = np.pad(wave[:length], (0, max(0, length - len(wave))))
        return AudioSample(scaled_output(wave, rate, like, self.normalize), rate,
                           like.format if like else None)

    def _mean_aperiodicity(self) -> np.ndarray:
        if self.aperiodicity.size:
            return self.aperiodicity
        bands = pyworld().get_num_aperiodicities(self.params["rate"])
        return np.zeros(bands)  # not fitted: fully periodic


@styletx.hookimpl
def register_encoders(register):
    register(WorldEncoder)
