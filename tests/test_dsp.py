"""styletx.audio.dsp: STFT, mel inversion and Griffin-Lim against librosa and against known answers.

No timing here: speed is measured by benchmarks/griffinlim.py.
"""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from styletx.audio import dsp

SR, N_FFT, HOP = 22050, 1024, 256


def voice(seconds: float = 1.0, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """A short synthetic vowel sequence: harmonics with a gliding F0 through two formants."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 * (1 + 0.2 * np.sin(2 * np.pi * 1.5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    x = sum(np.sin(h * phase) / h for h in range(1, 40)) + 0.01 * rng.standard_normal(t.size)
    y = np.zeros_like(x)
    for formant, bw in ((700, 90), (1800, 120)):
        r, th = np.exp(-np.pi * bw / SR), 2 * np.pi * formant / SR
        y += scipy.signal.lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], x)
    y *= np.hanning(y.size) ** 0.25  # onset and decay, with silence at the very ends
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture(scope="module")
def y() -> np.ndarray:
    return voice()


@pytest.fixture(scope="module")
def S(y) -> np.ndarray:
    return np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))


def sc(S, y) -> float:
    return dsp.spectral_convergence(S, y, N_FFT, HOP)


# ----------------------------------------------------------------------------- STFT and mel


def test_stft_magnitude_matches_librosa(y, S):
    ours = dsp.stft_magnitude(y, N_FFT, HOP)
    assert ours.shape == S.shape == (N_FFT // 2 + 1, 1 + y.size // HOP)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, S, atol=1e-5 * S.max())
    from_tensor = dsp.stft_magnitude(torch.from_numpy(y), N_FFT, HOP)
    assert isinstance(from_tensor, torch.Tensor)
    np.testing.assert_allclose(from_tensor.numpy(), S, atol=1e-5 * S.max())


def test_stft_magnitude_batches_any_leading_shape(y):
    batch = np.stack([y, 0.5 * y, y[::-1].copy()]).reshape(3, 1, -1)
    out = dsp.stft_magnitude(batch, 512, 128)
    assert out.shape == (3, 1, 257, 1 + y.size // 128)
    np.testing.assert_allclose(out[1, 0], 0.5 * dsp.stft_magnitude(y, 512, 128), rtol=1e-5,
                               atol=1e-6)


def test_mel_filterbank_is_librosas():
    ours = dsp.mel_filterbank(SR, N_FFT, 80)
    np.testing.assert_allclose(ours, librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=80),
                               rtol=1e-6)
    ours[:] = 0  # a copy: the cached filterbank is untouched
    assert dsp.mel_filterbank(SR, N_FFT, 80).any()


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_mel_to_linear_as_accurate_as_librosa_nnls(S, power):
    mel = dsp.mel_filterbank(SR, N_FFT, 80) @ S**power
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = librosa.feature.inverse.mel_to_stft(mel, sr=SR, n_fft=N_FFT, power=power)
    ours = dsp.mel_to_linear(mel, SR, N_FFT, power=power)
    assert ours.shape == S.shape and ours.dtype == np.float32 and ours.min() >= 0

    def err(x):
        return np.linalg.norm(x - S) / np.linalg.norm(S)

    assert err(ours) <= err(ref) + 1e-4
    # the clipped pseudo-inverse alone is already close; the refinement step only helps
    plain = dsp.mel_to_linear(mel, SR, N_FFT, power=power, n_iter=0)
    assert err(plain) <= 1.05 * err(ref)
    assert err(ours) <= err(plain) + 1e-6


def test_mel_to_linear_torch_agrees_and_keeps_batch_dims(S):
    mel = dsp.mel_filterbank(SR, N_FFT, 64) @ S
    batch = np.stack([mel, 2 * mel])
    ours = dsp.mel_to_linear(batch, SR, N_FFT)
    assert ours.shape == (2, *S.shape)
    np.testing.assert_allclose(ours[1], 2 * ours[0], rtol=1e-4, atol=1e-5)
    tensor = dsp.mel_to_linear(torch.from_numpy(batch), SR, N_FFT)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), ours, rtol=1e-4, atol=1e-4 * ours.max())


# ----------------------------------------------------------------------------- Griffin-Lim


def test_convergence_decreases_with_iterations(S):
    values = [dsp.griffinlim(S, N_FFT, HOP, n_iter=n, return_convergence=True)[1]
              for n in (0, 4, 16, 64)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.1, values


def test_reported_convergence_is_that_of_the_output(S):
    out, conv = dsp.griffinlim(S, N_FFT, HOP, n_iter=8, return_convergence=True)
    assert isinstance(conv, float)
    assert conv == pytest.approx(sc(S, out), rel=1e-4)


@pytest.mark.parametrize("momentum", [0.99, 0.0])
def test_equal_or_better_than_librosa_from_the_same_start(S, momentum):
    ref = librosa.griffinlim(S, n_iter=32, hop_length=HOP, n_fft=N_FFT, momentum=momentum,
                             init="random", random_state=0)
    ours = dsp.griffinlim(S, N_FFT, HOP, n_iter=32, momentum=momentum, seed=0)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert sc(S, ours) <= sc(S, ref) + 1e-4
    # seed=0 draws librosa's random_state=0 phases, so the whole run is the same algorithm
    np.testing.assert_allclose(ours, ref, atol=1e-3 * np.abs(ref).max())


def test_zero_phase_start_matches_librosa_init_none(S):
    ref = librosa.griffinlim(S, n_iter=16, hop_length=HOP, n_fft=N_FFT, init=None)
    ours = dsp.griffinlim(S, N_FFT, HOP, n_iter=16, init_phase=np.zeros_like(S))
    np.testing.assert_allclose(ours, ref, atol=1e-3 * np.abs(ref).max())


def test_true_phase_gives_near_perfect_reconstruction(y):
    X = librosa.stft(y, n_fft=N_FFT, hop_length=HOP)
    S = np.abs(X)
    for init in (np.angle(X), X):  # angles, or a complex spectrogram whose angle is used
        out, conv = dsp.griffinlim(S, N_FFT, HOP, n_iter=0, init_phase=init, length=y.size,
                                   return_convergence=True)
        assert conv < 1e-5
        np.testing.assert_allclose(out, y, atol=1e-5)
    out, conv = dsp.griffinlim(S, N_FFT, HOP, n_iter=32, init_phase=np.angle(X), length=y.size,
                               return_convergence=True)
    assert conv < 1e-5
    np.testing.assert_allclose(out, y, atol=1e-5)


def test_batch_equals_items(y):
    waves = np.stack([y, voice(f0=200.0, seed=1), 0.1 * y[::-1]])
    S = dsp.stft_magnitude(waves, N_FFT, HOP)
    phase = np.random.default_rng(0).uniform(0, 2 * np.pi, S.shape)
    batch, conv = dsp.griffinlim(S, N_FFT, HOP, n_iter=10, init_phase=phase,
                                 return_convergence=True)
    assert batch.shape == (3, HOP * (S.shape[-1] - 1)) and conv.shape == (3,)
    for i in range(3):
        item, item_conv = dsp.griffinlim(S[i], N_FFT, HOP, n_iter=10, init_phase=phase[i],
                                         return_convergence=True)
        np.testing.assert_allclose(batch[i], item, atol=1e-6)
        assert conv[i] == pytest.approx(item_conv, rel=1e-5)


def test_output_length(y, S):
    assert dsp.griffinlim(S, N_FFT, HOP, n_iter=2).shape == (HOP * (S.shape[1] - 1),)
    for length in (y.size, HOP * S.shape[1] - 1, HOP * (S.shape[1] - 1)):
        assert dsp.griffinlim(S, N_FFT, HOP, n_iter=2, length=length).shape == (length,)
    ref = librosa.griffinlim(S, n_iter=4, hop_length=HOP, n_fft=N_FFT, length=y.size,
                             random_state=0)
    ours = dsp.griffinlim(S, N_FFT, HOP, n_iter=4, length=y.size)
    np.testing.assert_allclose(ours, ref, atol=1e-3 * np.abs(ref).max())


def test_torch_path_agrees_with_numpy_path(S):
    ours, conv = dsp.griffinlim(S, N_FFT, HOP, n_iter=8, return_convergence=True)
    tensor = torch.from_numpy(S)
    via_torch, torch_conv = dsp.griffinlim(tensor, N_FFT, HOP, n_iter=8, backend="torch",
                                           return_convergence=True)
    assert isinstance(via_torch, torch.Tensor) and via_torch.dtype == torch.float32
    assert isinstance(torch_conv, float)
    np.testing.assert_allclose(via_torch.numpy(), ours, atol=1e-3 * np.abs(ours).max())
    assert torch_conv == pytest.approx(conv, abs=1e-4)
    # a CPU tensor takes the Numba path unless told otherwise, and comes back as a tensor
    auto = dsp.griffinlim(tensor, N_FFT, HOP, n_iter=8)
    assert isinstance(auto, torch.Tensor)
    np.testing.assert_allclose(auto.numpy(), ours, atol=1e-6)


def test_torch_path_batches_and_init_phase(y):
    X = torch.stft(torch.from_numpy(np.stack([y, y[::-1].copy()])), N_FFT, HOP,
                   window=torch.hann_window(N_FFT), pad_mode="constant", return_complex=True)
    out, conv = dsp.griffinlim(X.abs(), N_FFT, HOP, n_iter=0, init_phase=X, backend="torch",
                               return_convergence=True, length=y.size)
    assert out.shape == (2, y.size) and conv.shape == (2,)
    assert float(conv.max()) < 1e-5
    np.testing.assert_allclose(out[0].numpy(), y, atol=1e-5)


def test_scipy_fallback_matches(S, monkeypatch):
    fast = dsp.griffinlim(S, N_FFT, HOP, n_iter=10, return_convergence=True)
    monkeypatch.setattr(dsp, "FFT_BACKEND", "scipy")
    slow = dsp.griffinlim(S, N_FFT, HOP, n_iter=10, return_convergence=True)
    np.testing.assert_allclose(slow[0], fast[0], atol=1e-4 * np.abs(fast[0]).max())
    assert slow[1] == pytest.approx(fast[1], abs=1e-5)


def test_float64_stays_float64_and_seed_is_deterministic(S):
    out64 = dsp.griffinlim(S.astype(np.float64), N_FFT, HOP, n_iter=8)
    out32 = dsp.griffinlim(S, N_FFT, HOP, n_iter=8)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, out32, atol=1e-4)
    np.testing.assert_array_equal(dsp.griffinlim(S, N_FFT, HOP, n_iter=8, seed=3),
                                  dsp.griffinlim(S, N_FFT, HOP, n_iter=8, seed=3))
    assert not np.allclose(dsp.griffinlim(S, N_FFT, HOP, n_iter=8, seed=3), out32)


def test_other_fft_sizes_match_librosa():
    y = voice(0.5)
    for n_fft, hop in ((512, 128), (256, 64), (400, 100)):
        S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop))
        ref = librosa.griffinlim(S, n_iter=8, hop_length=hop, n_fft=n_fft, random_state=0)
        ours = dsp.griffinlim(S, n_fft, hop, n_iter=8)
        np.testing.assert_allclose(ours, ref, atol=1e-3 * np.abs(ref).max())


# ----------------------------------------------------------------------------- bad input

BAD_GRIFFINLIM = [
    (lambda S: S[0], {}, "shape \\(freq, frames\\) or \\(batch, freq, frames\\)"),
    (lambda S: S[None, None], {}, "shape \\(freq, frames\\)"),
    (lambda S: S[:-1], {}, "512 frequency bins but n_fft=1024 needs n_fft // 2 \\+ 1 = 513"),
    (lambda S: S[:, :0], {}, "at least one frame"),
    (lambda S: -S, {}, "non-negative"),
    (lambda S: np.where(S > S.max() / 2, np.nan, S), {}, "finite"),
    (lambda S: S.astype(np.complex64), {}, "must be real"),
    (lambda S: S, {"init_phase": np.zeros((3, 3))}, "init_phase has shape \\(3, 3\\)"),
    (lambda S: S, {"length": 10}, "length=10 does not fit"),
    (lambda S: S, {"n_fft": 1023}, "n_fft must be an even integer"),
    (lambda S: S, {"hop": 0}, "hop must be an integer in \\[1, n_fft=1024\\]"),
    (lambda S: S, {"n_iter": -1}, "n_iter must be a non-negative integer"),
    (lambda S: S, {"momentum": -0.5}, "momentum must be >= 0"),
    (lambda S: S, {"backend": "cuda"}, 'backend must be "auto", "numba" or "torch"'),
]


@pytest.mark.parametrize("make, kwargs, message", BAD_GRIFFINLIM)
def test_griffinlim_rejects_bad_input(S, make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        dsp.griffinlim(make(S), **{"n_fft": N_FFT, "hop": HOP, **kwargs})
    if "init_phase" not in kwargs and kwargs.get("backend") is None:
        with pytest.raises(ValueError, match=message):
            dsp.griffinlim(torch.from_numpy(np.ascontiguousarray(make(S))),
                           **{"n_fft": N_FFT, "hop": HOP, **kwargs})


def test_other_functions_reject_bad_input(S):
    with pytest.raises(ValueError, match="time"):
        dsp.stft_magnitude(np.zeros(0))
    with pytest.raises(ValueError, match="real waveform"):
        dsp.stft_magnitude(np.zeros(100, np.complex64))
    with pytest.raises(ValueError, match="mel must have shape"):
        dsp.mel_to_linear(np.ones(80), SR, N_FFT)
    with pytest.raises(ValueError, match="not its log"):
        dsp.mel_to_linear(-np.ones((80, 4)), SR, N_FFT)
    with pytest.raises(ValueError, match="power must be positive"):
        dsp.mel_to_linear(np.ones((80, 4)), SR, N_FFT, power=0)
    with pytest.raises(ValueError, match="STFT of y has shape"):
        dsp.spectral_convergence(S, np.zeros(100), N_FFT, HOP)


def test_momentum_above_one_warns(S):
    with pytest.warns(UserWarning, match="unstable"):
        dsp.griffinlim(S, N_FFT, HOP, n_iter=1, momentum=1.5)


def test_griffinlim_in_chunks_bounds_memory_and_keeps_the_quality():
    """A long spectrogram is inverted in overlapping chunks (an 18-minute recording took 1.5 GB
    whole): each chunk starts from the phase of the one before where they overlap, so the
    joined wave is as consistent with the magnitude as the whole one; short ones are
    griffinlim's exactly."""
    y = np.concatenate([voice(2.0, f0, seed) for seed, f0 in enumerate((110, 150, 130))])
    S = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    length = len(y)
    whole = dsp.griffinlim(S, N_FFT, HOP, 32, length=length)
    assert np.array_equal(dsp.griffinlim_in_chunks(S, N_FFT, HOP, 32, length=length), whole)
    chunked = dsp.griffinlim_in_chunks(S, N_FFT, HOP, 32, length=length, chunk=S.shape[1] // 3,
                                       overlap=16)
    assert chunked.shape == whole.shape and chunked.dtype == np.float32
    assert sc(S, chunked) < 1.1 * sc(S, whole)


def test_stft_magnitude_in_blocks_is_librosas(monkeypatch):
    monkeypatch.setattr(dsp, "STFT_BLOCK_FRAMES", 7)  # several blocks, the last one partial
    y = np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32)
    expected = np.abs(librosa.stft(y, n_fft=512, hop_length=128, pad_mode="constant"))
    assert np.allclose(dsp.stft_magnitude(y, 512, 128), expected, atol=1e-4)
