"""Functional DSP core: STFT magnitude, mel filterbank and its inverse, fast Griffin-Lim.

Conventions match librosa 0.11 so that spectrograms compare with librosa's: a periodic Hann
window of length ``n_fft``, ``center=True`` with zero padding of ``n_fft // 2`` on both sides
(librosa's default ``pad_mode="constant"``), and the inverse STFT normalised by the
overlap-added squared window. Spectrograms are laid out ``(..., freq, frames)`` with
``freq = n_fft // 2 + 1``.

Every function takes numpy arrays or torch tensors and returns the same kind. For numpy input
(and CPU tensors, unless ``backend="torch"``) the whole Griffin-Lim loop is one Numba function
(compiled once, cached on disk, releases the GIL): batched FFTs over all frames through
rocket-fft (numpy.fft inside ``@njit``), and fused kernels for overlap-add with window-sum
normalisation, framing and the momentum update. It runs on one thread on purpose: each FFT
takes about a millisecond, and when another process holds the second core every two-thread FFT
waits for it (torch.fft with two threads measured 2-60x slower than with one on a busy 2-core
machine, 1.7x faster on an idle one); one thread is predictable, and independent calls can run
in parallel threads. Without rocket-fft the same kernels run between ``scipy.fft`` calls (10-20%
slower; ``FFT_BACKEND`` says which is in use; ``benchmarks/griffinlim.py`` measures all of
these). CUDA tensors use ``torch.stft`` / ``torch.istft`` on the device. The mel inverse is
single-threaded Numba too (a small dense product and a sparse one, see ``_mel_matrices``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numba
import numpy as np
import torch

try:  # numpy.fft inside @njit; without it the FFTs run in scipy.fft between the kernels
    import rocket_fft  # noqa: F401

    FFT_BACKEND = "rocket-fft"
except ImportError:  # pragma: no cover - depends on the environment
    FFT_BACKEND = "scipy"

__all__ = [
    "griffinlim",
    "mel_filterbank",
    "mel_to_linear",
    "spectral_convergence",
    "stft_magnitude",
]

# error_model="numpy": without it Numba checks every division for zero, which stops LLVM
# from vectorising the update loop (measured 6x slower).
_JIT = dict(cache=True, nogil=True, fastmath=True, error_model="numpy", boundscheck=False)


# --------------------------------------------------------------------------- Numba kernels


@numba.njit(**_JIT)
def _overlap_add(frames, window, envelope, hop, out):  # pragma: no cover - compiled
    """out[b] = envelope * sum_t (frames[b, t] * window) placed at t * hop."""
    n_batch, n_frames, n_fft = frames.shape
    for b in range(n_batch):
        buf = out[b]
        buf[:] = 0
        for t in range(n_frames):
            seg = buf[t * hop : t * hop + n_fft]
            row = frames[b, t]
            for k in range(n_fft):
                seg[k] += row[k] * window[k]
        for j in range(buf.size):
            buf[j] *= envelope[j]


@numba.njit(**_JIT)
def _frame(signal, window, hop, out):  # pragma: no cover - compiled
    """out[b, t] = signal[b, t * hop : t * hop + n_fft] * window."""
    n_batch, n_frames, n_fft = out.shape
    for b in range(n_batch):
        for t in range(n_frames):
            seg = signal[b, t * hop : t * hop + n_fft]
            row = out[b, t]
            for k in range(n_fft):
                row[k] = seg[k] * window[k]


@numba.njit(**_JIT)
def _project(rebuilt, previous, magnitude, angles, alpha, eps):  # pragma: no cover - compiled
    """Fast Griffin-Lim update on (rows, freq) views, as in librosa:

    angles = magnitude * z / (|z| + eps) with z = rebuilt - alpha * previous.
    """
    n_rows, n_freq = rebuilt.shape
    for r in range(n_rows):
        x = rebuilt[r]
        p = previous[r]
        s = magnitude[r]
        a = angles[r]
        for f in range(n_freq):
            z = x[f] - alpha * p[f]
            a[f] = z * (s[f] / (np.sqrt(z.real * z.real + z.imag * z.imag) + eps))


@numba.njit(**_JIT)
def _polar(magnitude, cos, sin, out):  # pragma: no cover - compiled
    """out[b, t, f] = magnitude[b, t, f] * (cos[b, f, t] + i sin[b, f, t])."""
    n_batch, n_frames, n_freq = magnitude.shape
    tile = 32  # a transpose: tiles keep both the reads and the writes in cache
    for b in range(n_batch):
        for f0 in range(0, n_freq, tile):
            for t0 in range(0, n_frames, tile):
                for t in range(t0, min(t0 + tile, n_frames)):
                    for f in range(f0, min(f0 + tile, n_freq)):
                        out[b, t, f] = magnitude[b, t, f] * (cos[b, f, t] + 1j * sin[b, f, t])


@numba.njit(**_JIT)
def _griffinlim_loop(angles, magnitude, window, envelope, hop, n_iter, alpha, eps,
                     signal):  # pragma: no cover - compiled
    """n_iter fast Griffin-Lim updates of ``angles`` (batch, frames, freq) in place, then the
    inverse STFT of the result (still padded, see ``_envelope``) into ``signal``."""
    n_batch, n_frames, n_freq = magnitude.shape
    n_fft = window.size
    rows = (n_batch * n_frames, n_freq)
    target = magnitude.reshape(rows)
    frames = np.empty((n_batch, n_frames, n_fft), signal.dtype)
    rebuilt = np.empty_like(angles)
    previous = np.zeros_like(angles)  # finite, so the first update's 0 * previous is 0
    for i in range(n_iter):
        np.fft.irfft(angles, n_fft, -1, out=frames)
        _overlap_add(frames, window, envelope, hop, signal)
        _frame(signal, window, hop, frames)
        np.fft.rfft(frames, n_fft, -1, out=rebuilt)
        _project(rebuilt.reshape(rows), previous.reshape(rows), target, angles.reshape(rows),
                 alpha if i > 0 else alpha * 0, eps)
        rebuilt, previous = previous, rebuilt
    np.fft.irfft(angles, n_fft, -1, out=frames)
    _overlap_add(frames, window, envelope, hop, signal)


@numba.njit(**_JIT)
def _rfft_nb(frames):  # pragma: no cover - compiled
    return np.fft.rfft(frames, frames.shape[-1], -1)


@numba.njit(**_JIT)
def _mel_inverse(mel, fb, gram_pinv, lo, hi, step, n_iter, out):  # pragma: no cover - compiled
    """out[b] = clip(fb.T @ (gram_pinv @ mel[b])) = the clipped pinv(fb) @ mel[b], then n_iter
    projected-gradient steps x = clip(x - step * fb.T @ (fb @ x - mel[b])); fb is used only
    on each filter's non-zero bins [lo[m], hi[m])."""
    n_batch, n_mels, n_frames = mel.shape
    z = np.empty((n_mels, n_frames), mel.dtype)
    for b in range(n_batch):
        x = out[b]
        x[:] = 0
        for i in range(n_mels):
            zi = z[i]
            zi[:] = 0
            for j in range(n_mels):
                g = gram_pinv[i, j]
                mj = mel[b, j]
                for t in range(n_frames):
                    zi[t] += g * mj[t]
        for it in range(n_iter + 1):
            if it > 0:  # z = -step * (fb @ x - mel)
                for m in range(n_mels):
                    zm = z[m]
                    mm = mel[b, m]
                    for t in range(n_frames):
                        zm[t] = mm[t]
                    for k in range(lo[m], hi[m]):
                        w = fb[m, k]
                        xk = x[k]
                        for t in range(n_frames):
                            zm[t] -= w * xk[t]
                    for t in range(n_frames):
                        zm[t] *= step
            for m in range(n_mels):  # x = clip(x + fb.T @ z)
                zm = z[m]
                for k in range(lo[m], hi[m]):
                    w = fb[m, k]
                    xk = x[k]
                    for t in range(n_frames):
                        xk[t] += w * zm[t]
            for k in range(x.shape[0]):
                xk = x[k]
                for t in range(n_frames):
                    xk[t] = max(xk[t], 0)


@numba.njit(**_JIT)
def _convergence(spec, magnitude, out):  # pragma: no cover - compiled
    """out[b] = ||magnitude[b] - |spec[b]| ||_F / ||magnitude[b]||_F, sums in float64."""
    n_batch, n_frames, n_freq = spec.shape
    for b in range(n_batch):
        num = 0.0
        den = 0.0
        for t in range(n_frames):
            for f in range(n_freq):
                z = spec[b, t, f]
                s = magnitude[b, t, f]
                d = s - np.sqrt(z.real * z.real + z.imag * z.imag)
                num += d * d
                den += s * s
        if den > 0:
            out[b] = math.sqrt(num / den)
        else:
            out[b] = 0.0 if num == 0 else math.inf


# --------------------------------------------------------------------------- helpers


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def _real_dtype(x) -> np.dtype:
    """float64 stays float64; every other real dtype computes in float32."""
    return np.dtype(np.float64) if np.asarray(x).dtype == np.float64 else np.dtype(np.float32)


def _check_fft_hop(n_fft: int, hop: int) -> None:
    if not isinstance(n_fft, (int, np.integer)) or n_fft < 2 or n_fft % 2:
        raise ValueError(f"n_fft must be an even integer >= 2, got {n_fft!r}")
    if not isinstance(hop, (int, np.integer)) or not 1 <= hop <= n_fft:
        raise ValueError(f"hop must be an integer in [1, n_fft={n_fft}], got {hop!r}")


@functools.lru_cache(maxsize=8)
def _window(n_fft: int, dtype: str) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window("hann", n_fft, fftbins=True))."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    w = w.astype(dtype)
    w.flags.writeable = False
    return w


@functools.lru_cache(maxsize=32)
def _envelope(n_fft: int, hop: int, n_frames: int, length: int, dtype: str) -> np.ndarray:
    """Inverse window-sum envelope over the padded signal, zero outside the kept samples.

    The inverse STFT divides the overlap-added frames by the overlap-added squared window
    (where that sum is not tiny, as librosa does) and keeps samples
    ``[n_fft // 2, n_fft // 2 + length)``; the STFT of that signal re-pads it with zeros. Both
    steps are one multiplication by this vector, computed once per shape.
    """
    size = max(n_fft + hop * (n_frames - 1), n_fft // 2 + length)
    w2 = _window(n_fft, "float64") ** 2
    total = np.zeros(size)
    for t in range(n_frames):
        total[t * hop : t * hop + n_fft] += w2
    tiny = np.finfo(np.dtype(dtype)).tiny
    env = np.where(total > tiny, 1.0 / np.maximum(total, tiny), 1.0)
    keep = np.zeros(size, dtype=bool)
    keep[n_fft // 2 : n_fft // 2 + length] = True
    env = np.where(keep, env, 0.0).astype(dtype)
    env.flags.writeable = False
    return env


def _complex_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.complex128) if dtype == np.float64 else np.dtype(np.complex64)


def _rfft(frames: np.ndarray) -> np.ndarray:
    """Real FFT along the last axis, one thread."""
    if FFT_BACKEND == "rocket-fft":
        return _rfft_nb(frames)
    import scipy.fft

    return scipy.fft.rfft(frames, axis=-1, workers=1)


# --------------------------------------------------------------------------- STFT


def stft_magnitude(y, n_fft: int = 1024, hop: int = 256):
    """Magnitude of the short-time Fourier transform, as ``np.abs(librosa.stft(y))``.

    Periodic Hann window of length ``n_fft``, frames centred (zero padding of ``n_fft // 2``
    on both sides, librosa's default ``pad_mode="constant"``).

    Args:
        y: waveform of shape ``(..., time)``, numpy array or torch tensor.
        n_fft: FFT size and window length, even (default 1024).
        hop: hop between frames in samples (default 256).

    Returns:
        Magnitude of shape ``(..., n_fft // 2 + 1, 1 + time // hop)``, the same kind
        (numpy / torch, device) as ``y``; float64 input stays float64, other input gives
        float32.
    """
    _check_fft_hop(n_fft, hop)
    if _is_tensor(y):
        if y.ndim < 1 or y.shape[-1] < 1:
            raise ValueError(f"y must have shape (..., time) with time >= 1, got {tuple(y.shape)}")
        y = y if y.dtype == torch.float64 else y.float()
        window = torch.hann_window(n_fft, periodic=True, dtype=y.dtype, device=y.device)
        flat = y.reshape(-1, y.shape[-1])
        spec = torch.stft(flat, n_fft, hop, window=window, center=True, pad_mode="constant",
                          return_complex=True)
        return spec.abs().reshape(*y.shape[:-1], *spec.shape[-2:])

    y = np.asarray(y)
    if y.ndim < 1 or y.shape[-1] < 1:
        raise ValueError(f"y must have shape (..., time) with time >= 1, got {y.shape}")
    if np.iscomplexobj(y):
        raise ValueError("y must be a real waveform, got a complex array")
    dtype = _real_dtype(y)
    flat = y.reshape(-1, y.shape[-1]).astype(dtype, copy=False)
    n_frames = 1 + flat.shape[-1] // hop
    mag = np.empty((flat.shape[0], n_fft // 2 + 1, n_frames), dtype)  # (batch, freq, frames)
    for first in range(0, n_frames, STFT_BLOCK_FRAMES):  # a block at a time: bounded memory
        frames = slice(first, min(first + STFT_BLOCK_FRAMES, n_frames))
        mag[:, :, frames] = np.abs(_stft(flat, n_fft, hop, frames)).transpose(0, 2, 1)
    return mag.reshape(*y.shape[:-1], *mag.shape[-2:])


STFT_BLOCK_FRAMES = 4096  # stft_magnitude's frames a pass: the frames and their spectrum of an
#                           18-minute recording took 760 MB at once


def _stft(y: np.ndarray, n_fft: int, hop: int, frames: slice | None = None) -> np.ndarray:
    """Centred STFT of (batch, time) float signals, returned as (batch, frames, freq); only
    the frames ``frames`` (a slice with a start and a stop) when given."""
    n_batch, size = y.shape
    n_frames = 1 + size // hop
    first, stop = (0, n_frames) if frames is None else (frames.start, frames.stop)
    # the padded signal under those frames alone: n_fft // 2 zeros before sample 0 and after
    # the last sample, as a centred STFT pads
    begin, end = first * hop - n_fft // 2, (stop - 1) * hop + n_fft - n_fft // 2
    padded = np.zeros((n_batch, end - begin), y.dtype)
    inside = slice(max(begin, 0), min(end, size))
    padded[:, inside.start - begin : inside.stop - begin] = y[:, inside]
    out = np.empty((n_batch, stop - first, n_fft), y.dtype)
    _frame(padded, _window(n_fft, y.dtype.name), hop, out)
    return _rfft(out)


def spectral_convergence(magnitude, y, n_fft: int = 1024, hop: int = 256):
    """Spectral convergence ``||S - |STFT(y)| ||_F / ||S||_F`` of a waveform against a target.

    Args:
        magnitude: target magnitude ``S``, ``(freq, frames)`` or ``(batch, freq, frames)``.
        y: waveform(s) ``(time,)`` or ``(batch, time)`` whose STFT has the same shape as ``S``.
        n_fft, hop: STFT settings (defaults 1024, 256), conventions as :func:`stft_magnitude`.

    Returns:
        A float for a single spectrogram, one value per item (array or tensor) for a batch.
    """
    if _is_tensor(magnitude) and not _is_tensor(y):
        y = torch.from_numpy(np.asarray(y)).to(magnitude.device)
    elif _is_tensor(y) and not _is_tensor(magnitude):
        y = y.detach().cpu().numpy()
    mag = stft_magnitude(y, n_fft, hop)
    if tuple(mag.shape) != tuple(magnitude.shape):
        raise ValueError(
            f"STFT of y has shape {tuple(mag.shape)}, magnitude has {tuple(magnitude.shape)}"
        )
    if _is_tensor(magnitude):
        s = magnitude.to(mag.dtype)
        num = torch.linalg.vector_norm(s - mag, dim=(-2, -1))
        result = num / torch.linalg.vector_norm(s, dim=(-2, -1))
        return result.item() if result.ndim == 0 else result
    s = np.asarray(magnitude, np.float64)
    result = np.linalg.norm(s - mag, axis=(-2, -1)) / np.linalg.norm(s, axis=(-2, -1))
    return float(result) if np.ndim(result) == 0 else result


# --------------------------------------------------------------------------- mel


@functools.lru_cache(maxsize=16)
def _mel_matrices(sr: float, n_fft: int, n_mels: int, fmin: float, fmax: float | None,
                  htk: bool, norm, dtype: str) -> dict:
    """The filterbank and what inverting it needs, computed once per setting (read-only).

    ``pinv(fb) = fb.T @ pinv(fb @ fb.T)``, and each mel filter is non-zero on a short run of
    bins ``[lo, hi)``, so the pseudo-inverse is applied as a small dense (n_mels, n_mels)
    product followed by a sparse one: single-threaded, ~10x fewer operations than the dense
    (freq, n_mels) product, and no BLAS threads to stall on a busy machine.
    """
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about empty filters at small n_fft
        fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                 htk=htk, norm=norm, dtype=np.float64)
    nonzero = fb != 0
    lo = np.where(nonzero.any(1), nonzero.argmax(1), 0).astype(np.int64)
    hi = np.where(nonzero.any(1), fb.shape[1] - nonzero[:, ::-1].argmax(1), 0).astype(np.int64)
    mats = {
        "fb": np.ascontiguousarray(fb, dtype),
        "pinv": np.ascontiguousarray(np.linalg.pinv(fb), dtype),
        "gram_pinv": np.ascontiguousarray(np.linalg.pinv(fb @ fb.T), dtype),
        "lo": lo,
        "hi": hi,
    }
    for m in mats.values():
        m.flags.writeable = False
    mats["step"] = 1.0 / float(np.linalg.eigvalsh(fb @ fb.T).max())
    return mats


def _mel_key(sr, n_fft, n_mels, fmin, fmax, htk, norm, dtype="float32"):
    if not sr > 0:
        raise ValueError(f"sr must be positive, got {sr!r}")
    if not isinstance(n_fft, (int, np.integer)) or n_fft < 2:
        raise ValueError(f"n_fft must be an integer >= 2, got {n_fft!r}")
    if not isinstance(n_mels, (int, np.integer)) or n_mels < 1:
        raise ValueError(f"n_mels must be a positive integer, got {n_mels!r}")
    fmax = None if fmax is None else float(fmax)
    return float(sr), int(n_fft), int(n_mels), float(fmin), fmax, bool(htk), norm, dtype


def mel_filterbank(sr: float, n_fft: int, n_mels: int = 80, fmin: float = 0.0,
                   fmax: float | None = None, *, htk: bool = False, norm="slaney") -> np.ndarray:
    """Mel filterbank, ``librosa.filters.mel`` (Slaney mel scale and area normalisation).

    Args:
        sr: sample rate in Hz.
        n_fft: FFT size.
        n_mels: number of mel bands (default 80).
        fmin, fmax: lowest and highest frequency in Hz (defaults 0 and ``sr / 2``).
        htk, norm: passed to librosa (defaults ``False``, ``"slaney"``).

    Returns:
        float32 array ``(n_mels, n_fft // 2 + 1)`` (a copy of a cached one);
        ``mel = filterbank @ linear``.
    """
    return _mel_matrices(*_mel_key(sr, n_fft, n_mels, fmin, fmax, htk, norm))["fb"].copy()


def mel_to_linear(mel, sr: float, n_fft: int, *, power: float = 1.0, fmin: float = 0.0,
                  fmax: float | None = None, htk: bool = False, norm="slaney", n_iter: int = 10):
    """Linear-frequency magnitude from a mel spectrogram (inverts :func:`mel_filterbank`).

    ``mel = filterbank @ linear ** power`` has fewer equations than unknowns; this returns a
    non-negative solution: the filterbank's pseudo-inverse (precomputed and cached per
    setting) applied to ``mel`` and clipped at zero, then ``n_iter`` projected-gradient steps
    (step ``1 / ||filterbank||_2 ** 2``) of the non-negative least-squares problem
    ``min ||filterbank @ x - mel||`` that ``librosa.feature.inverse.mel_to_stft`` solves with
    L-BFGS-B. Clipping and each step are projections that never move ``x`` away from any
    non-negative ``linear ** power`` that produces ``mel``, so they can only help.

    Args:
        mel: mel spectrogram ``(..., n_mels, frames)``, non-negative (undo any log first),
            numpy array or torch tensor.
        sr: sample rate in Hz.
        n_fft: FFT size of the linear spectrogram.
        power: exponent the mel spectrogram was built with: 1 for magnitude (default), 2 for
            power.
        fmin, fmax, htk, norm: filterbank settings, as :func:`mel_filterbank`.
        n_iter: projected-gradient steps (default 10; 0 = the clipped pseudo-inverse alone).
            Measured on 10 s of speech-like sound, 80 mels: relative error to the true
            magnitude 0.251 (0 steps), 0.214 (10), 0.188 (50); librosa's NNLS 0.253. A step
            costs about as much as the pseudo-inverse itself (~0.2 ms for 10 s).

    Returns:
        Magnitude ``(..., n_fft // 2 + 1, frames)``: the kind and device of ``mel``, float64
        for float64 input, else float32.
    """
    if not _is_tensor(mel):
        mel = np.asarray(mel)
        if np.iscomplexobj(mel):
            raise ValueError("mel must be real, got a complex array")
    if mel.ndim < 2:
        raise ValueError(f"mel must have shape (..., n_mels, frames), got {tuple(mel.shape)}")
    if not power > 0:
        raise ValueError(f"power must be positive, got {power!r}")
    if not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    if bool((mel < 0).any()):
        raise ValueError("mel must be non-negative (a mel spectrogram, not its log)")
    is_double = mel.dtype in (torch.float64, np.float64)
    mats = _mel_matrices(*_mel_key(
        sr, n_fft, mel.shape[-2], fmin, fmax, htk, norm, "float64" if is_double else "float32"
    ))
    step = mats["step"]

    if _is_tensor(mel):  # dense products: what GPUs are good at
        mel = mel.to(torch.float64 if is_double else torch.float32)
        fb, pinv = (torch.tensor(mats[k], device=mel.device) for k in ("fb", "pinv"))
        x = (pinv @ mel).clamp_(min=0)
        for _ in range(n_iter):
            x = (x - step * (fb.T @ (fb @ x - mel))).clamp_(min=0)
        return x if power == 1 else x.pow_(1.0 / power)

    fb = mats["fb"]
    batch_shape = mel.shape[:-2]
    flat = np.ascontiguousarray(mel.reshape(-1, *mel.shape[-2:]), fb.dtype)
    x = np.empty((flat.shape[0], fb.shape[1], flat.shape[2]), fb.dtype)
    _mel_inverse(flat, fb, mats["gram_pinv"], mats["lo"], mats["hi"], fb.dtype.type(step),
                 n_iter, x)
    if power == 2:
        np.sqrt(x, out=x)
    elif power != 1:
        np.power(x, fb.dtype.type(1.0 / power), out=x)
    return x.reshape(*batch_shape, *x.shape[1:])


# --------------------------------------------------------------------------- Griffin-Lim


def griffinlim(magnitude, n_fft: int = 1024, hop: int = 256, n_iter: int = 32,
               momentum: float = 0.99, init_phase=None, length: int | None = None,
               return_convergence: bool = False, seed: int | Sequence[int] | None = 0,
               backend: str = "auto"):
    """Waveform from a magnitude spectrogram by fast Griffin-Lim (Perraudin et al., 2013).

    The update is librosa's ``griffinlim``: each iteration takes the STFT of the inverse STFT
    of the current estimate (``rebuilt``), then sets the estimate to
    ``S * z / (|z| + eps)`` with ``z = rebuilt - momentum / (1 + momentum) * previous_rebuilt``
    (no momentum term in the first iteration). STFT conventions as :func:`stft_magnitude`.

    Args:
        magnitude: ``S``, non-negative, ``(freq, frames)`` or ``(batch, freq, frames)`` with
            ``freq = n_fft // 2 + 1``; numpy array or torch tensor.
        n_fft: FFT size, even (default 1024).
        hop: hop length in samples (default 256).
        n_iter: iterations (default 32; 0 returns the inverse STFT of the initial estimate).
        momentum: fast Griffin-Lim momentum (default 0.99; 0 is plain Griffin-Lim).
        init_phase: initial phase, the shape of ``magnitude``: angles in radians, or a complex
            spectrogram whose angle is used (e.g. the source's STFT). ``None`` (default):
            random phase from ``seed``.
        length: output length in samples; ``1 + length // hop`` must equal ``frames``
            (default ``hop * (frames - 1)``).
        return_convergence: also return the spectral convergence
            ``||S - |STFT(y)| ||_F / ||S||_F`` of the result (one extra STFT).
        seed: seed of the random initial phase (default 0): uniform angles drawn as
            ``librosa.griffinlim(init="random", random_state=seed)`` draws them, so both start
            from the same phase. ``None``: fresh randomness. For a batch, a sequence of one
            seed per item draws each item's phase as a call with that item alone would, so a
            batch gives the waves of its items converted one at a time.
        backend: ``"auto"`` (default: ``"torch"`` for CUDA tensors, ``"numba"`` otherwise),
            ``"numba"`` (CPU kernels; a tensor is returned on its device) or ``"torch"``
            (``torch.stft`` / ``torch.istft`` on the tensor's device).

    Returns:
        ``y`` of shape ``(length,)`` or ``(batch, length)``, the kind and device of
        ``magnitude``, float64 for float64 input, else float32. With
        ``return_convergence``: ``(y, convergence)``, convergence a float for one
        spectrogram, else shape ``(batch,)`` (numpy array or tensor, like ``y``).
    """
    is_tensor = _is_tensor(magnitude)
    device = magnitude.device if is_tensor else None
    if not is_tensor:
        magnitude = np.asarray(magnitude)
    if init_phase is not None and not _is_tensor(init_phase):
        init_phase = np.asarray(init_phase)
    if backend == "auto":
        backend = "torch" if is_tensor and device.type != "cpu" else "numba"
    if backend not in ("numba", "torch"):
        raise ValueError(f'backend must be "auto", "numba" or "torch", got {backend!r}')
    _check_fft_hop(n_fft, hop)
    if not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum!r}")
    if momentum > 1:
        warnings.warn(f"Griffin-Lim with momentum={momentum} > 1 can be unstable", stacklevel=2)

    shape = tuple(magnitude.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"magnitude must have shape (freq, frames) or (batch, freq, frames), got {shape}"
        )
    if magnitude.is_complex() if is_tensor else np.iscomplexobj(magnitude):
        raise ValueError("magnitude must be real (pass abs() of a complex spectrogram)")
    n_freq, n_frames = shape[-2:]
    if n_freq != n_fft // 2 + 1:
        raise ValueError(
            f"magnitude has {n_freq} frequency bins but n_fft={n_fft} needs "
            f"n_fft // 2 + 1 = {n_fft // 2 + 1}"
        )
    if n_frames < 1 or (len(shape) == 3 and shape[0] < 1):
        raise ValueError(f"magnitude must have at least one frame and item, got shape {shape}")
    if length is None:
        length = hop * (n_frames - 1)
    elif not isinstance(length, (int, np.integer)) or 1 + length // hop != n_frames:
        raise ValueError(
            f"length={length!r} does not fit {n_frames} frames at hop {hop}: "
            f"1 + length // hop must equal frames, i.e. length in "
            f"[{hop * (n_frames - 1)}, {hop * n_frames - 1}]"
        )
    if seed is not None and not isinstance(seed, (int, np.integer)):
        seed = [int(s) for s in seed]  # one per item
        if len(shape) != 3 or len(seed) != shape[0]:
            raise ValueError(f"a sequence of seeds needs a batch (batch, freq, frames) with "
                             f"one seed per item, got {len(seed)} seed(s) for shape {shape}")
    if init_phase is not None and tuple(init_phase.shape) != shape:
        raise ValueError(
            f"init_phase has shape {tuple(init_phase.shape)}, magnitude has shape {shape}"
        )
    if is_tensor:
        bad = bool((~torch.isfinite(magnitude)).any() or (magnitude < 0).any())
    else:
        bad = not np.isfinite(magnitude).all() or bool((magnitude < 0).any())
    if bad:
        raise ValueError("magnitude must be finite and non-negative")

    batched = len(shape) == 3
    alpha = momentum / (1 + momentum)
    if backend == "torch":
        mag = magnitude if is_tensor else torch.from_numpy(magnitude)
        mag = mag if mag.dtype == torch.float64 else mag.float()
        phasor = _initial_phasor_torch(init_phase, shape, seed, mag)
        y, conv = _griffinlim_torch(mag.reshape(-1, n_freq, n_frames),
                                    phasor.reshape(-1, n_freq, n_frames), n_fft, hop, n_iter,
                                    alpha, length, return_convergence)
        if not is_tensor:
            y, conv = y.numpy(), None if conv is None else conv.numpy()
    else:
        mag = magnitude.detach().cpu().numpy() if is_tensor else magnitude
        dtype = _real_dtype(mag)
        mag = mag.astype(dtype, copy=False).reshape(-1, n_freq, n_frames)
        # (batch, frames, freq): FFTs along the last, contiguous axis.
        mag_t = np.ascontiguousarray(mag.transpose(0, 2, 1))
        angles = _initial_angles(init_phase, shape, seed, mag_t)
        y, conv = _griffinlim_numba(mag_t, angles, n_fft, hop, n_iter, alpha, length,
                                    return_convergence)
        if is_tensor:
            y = torch.from_numpy(y).to(device)
            conv = None if conv is None else torch.from_numpy(conv).to(device)

    if not batched:
        y = y[0]
        conv = None if conv is None else conv[0].item()
    return (y, conv) if return_convergence else y



GL_CHUNK_FRAMES = 4096  # griffinlim_in_chunks: frames a chunk (~48 s at 22.05 kHz, hop 256)
GL_OVERLAP_FRAMES = 64  # ... overlapping the next by this many (~0.74 s), cross-faded in the
#                         middle half of the overlap, away from either chunk's edge


def griffinlim_in_chunks(magnitude: np.ndarray, n_fft: int = 1024, hop: int = 256,
                         n_iter: int = 32, length: int | None = None, seed: int | None = 0,
                         chunk: int = GL_CHUNK_FRAMES,
                         overlap: int = GL_OVERLAP_FRAMES) -> np.ndarray:
    """``griffinlim`` of one ``(freq, frames)`` numpy magnitude in overlapping chunks of
    ``chunk`` frames, so that memory stays bounded whatever the length (whole, an 18-minute
    recording's took 1.5 GB). Each chunk after the first starts from the phase of the one
    before where they overlap, so the two agree there and the cross-fade joins the same wave;
    the rest of its phase is random (seed ``seed + k`` for chunk k). Short spectrograms are
    ``griffinlim``'s exactly."""
    frames = magnitude.shape[-1]
    if frames <= chunk:
        return griffinlim(magnitude, n_fft, hop, n_iter, length=length, seed=seed)
    if not 0 < 4 * overlap < chunk:
        raise ValueError(f"need 0 < 4 * overlap < chunk, got overlap {overlap}, chunk {chunk}")
    total = hop * (frames - 1) if length is None else length
    out = np.zeros(total, np.float32)
    start, k, before = 0, 0, None
    while True:
        end = min(start + chunk, frames)
        part = magnitude[:, start:end]
        phase = _random_angles(part.shape, None if seed is None else seed + k)
        if before is not None:  # the previous chunk's phase where the two overlap
            tail = _stft(before[None, -(overlap - 1) * hop:], n_fft, hop)[0]  # (overlap, freq)
            phase[:, :overlap] = np.angle(tail).T
        size = hop * (end - start - 1) if end < frames else total - start * hop
        wave = griffinlim(part, n_fft, hop, n_iter, init_phase=phase, length=size)
        offset = start * hop
        if before is None:
            out[:size] = wave
        else:  # cross-fade over the middle half of the overlap
            shared = (overlap - 1) * hop
            fade_from, fade_len = shared // 4, shared // 2
            ramp = np.linspace(0.0, 1.0, fade_len, dtype=np.float32)
            seam = slice(offset + fade_from, offset + fade_from + fade_len)
            out[seam] = out[seam] * (1 - ramp) + wave[fade_from:fade_from + fade_len] * ramp
            out[offset + fade_from + fade_len:offset + size] = wave[fade_from + fade_len:]
        if end == frames:
            return out
        before, start, k = wave, end - overlap, k + 1

def _random_angles(shape: tuple, seed: int | list[int] | None, dtype=np.float64) -> np.ndarray:
    """Uniform angles in [0, 2 pi): the draws of librosa.griffinlim(random_state=seed); a list
    of seeds draws item ``i`` of the batch ``shape`` with ``seed[i]``."""
    if isinstance(seed, list):
        return np.stack([_random_angles(shape[1:], s, dtype) for s in seed])
    rng = np.random.default_rng() if seed is None else np.random.RandomState(seed)
    return np.multiply(rng.random(size=shape), 2 * np.pi, dtype=dtype)


def _initial_angles(init_phase, shape: tuple, seed, mag_t: np.ndarray) -> np.ndarray:
    """magnitude * exp(i * phase) in (batch, frames, freq) layout."""
    n_batch, n_frames, n_freq = mag_t.shape
    if init_phase is None:
        phase = _random_angles(shape, seed, mag_t.dtype)
    else:
        phase = init_phase.detach().cpu().numpy() if _is_tensor(init_phase) else init_phase
    phase = phase.reshape(n_batch, n_freq, n_frames)
    angles = np.empty(mag_t.shape, _complex_dtype(mag_t.dtype))
    if np.iscomplexobj(phase):
        absval = np.abs(phase)
        phase = np.where(absval > 0, phase / np.where(absval > 0, absval, 1), 1)
        cos, sin = phase.real, phase.imag
    else:
        phase = phase.astype(mag_t.dtype, copy=False)  # numpy's float32 cos/sin are SIMD
        cos, sin = np.cos(phase), np.sin(phase)
    _polar(mag_t, np.ascontiguousarray(cos, mag_t.dtype), np.ascontiguousarray(sin, mag_t.dtype),
           angles)
    return angles


def _griffinlim_numba(mag_t, angles, n_fft, hop, n_iter, alpha, length, want_convergence):
    """Fast Griffin-Lim on (batch, frames, freq) arrays; ``angles`` is overwritten."""
    n_batch, n_frames, n_freq = mag_t.shape
    dtype = mag_t.dtype
    window = _window(n_fft, dtype.name)
    envelope = _envelope(n_fft, hop, n_frames, length, dtype.name)
    eps = dtype.type(np.finfo(dtype).tiny)
    alpha = dtype.type(alpha)
    signal = np.empty((n_batch, envelope.size), dtype)
    if FFT_BACKEND == "rocket-fft":
        _griffinlim_loop(angles, mag_t, window, envelope, hop, n_iter, alpha, eps, signal)
    else:
        _griffinlim_pyloop(angles, mag_t, window, envelope, hop, n_iter, alpha, eps, signal)
    y = np.ascontiguousarray(signal[:, n_fft // 2 : n_fft // 2 + length])
    conv = None
    if want_convergence:
        # the zero-masked signal is the padded y, so its frames are the STFT frames of y
        frames = np.empty((n_batch, n_frames, n_fft), dtype)
        _frame(signal, window, hop, frames)
        conv = np.empty(n_batch)
        _convergence(_rfft(frames), mag_t, conv)
    return y, conv


def _griffinlim_pyloop(angles, mag_t, window, envelope, hop, n_iter, alpha, eps, signal,
                       rfft=None, irfft=None):
    """``_griffinlim_loop`` with the FFTs called from Python: ``rfft(frames)`` and
    ``irfft(spec, n_fft)`` along the last axis, scipy.fft on one thread by default (the
    fallback without rocket-fft; the benchmark also passes torch.fft here)."""
    if rfft is None or irfft is None:
        import scipy.fft

        rfft = functools.partial(scipy.fft.rfft, axis=-1, workers=1)
        irfft = functools.partial(scipy.fft.irfft, axis=-1, workers=1)
    n_fft = window.size
    rows = (-1, mag_t.shape[-1])
    previous = np.zeros_like(angles)
    for i in range(n_iter):
        frames = irfft(angles, n_fft)
        _overlap_add(frames, window, envelope, hop, signal)
        _frame(signal, window, hop, frames)
        rebuilt = rfft(frames)
        _project(rebuilt.reshape(rows), previous.reshape(rows), mag_t.reshape(rows),
                 angles.reshape(rows), alpha if i else alpha * 0, eps)
        previous = rebuilt
    _overlap_add(irfft(angles, n_fft), window, envelope, hop, signal)


def _initial_phasor_torch(init_phase, shape: tuple, seed, mag: torch.Tensor) -> torch.Tensor:
    """Unit phasors exp(i * phase), shape of magnitude, on its device."""
    cdtype = torch.complex128 if mag.dtype == torch.float64 else torch.complex64
    if init_phase is None:
        phase = torch.from_numpy(_random_angles(shape, seed)).to(mag.device, mag.dtype)
    else:
        phase = torch.as_tensor(init_phase, device=mag.device)
        if phase.is_complex():
            absval = phase.abs()
            return torch.where(absval > 0, phase / absval.clamp(min=torch.finfo(absval.dtype).tiny),
                               torch.ones_like(phase)).to(cdtype)
        phase = phase.to(mag.dtype)
    return torch.polar(torch.ones_like(phase), phase).to(cdtype)


@torch.no_grad()
def _griffinlim_torch(mag, phasor, n_fft, hop, n_iter, alpha, length, want_convergence):
    """The same algorithm with torch.stft / torch.istft on (batch, freq, frames) tensors."""
    window = torch.hann_window(n_fft, periodic=True, dtype=mag.dtype, device=mag.device)
    eps = torch.finfo(mag.dtype).tiny
    stft = functools.partial(torch.stft, n_fft=n_fft, hop_length=hop, window=window,
                             center=True, pad_mode="constant", return_complex=True)
    istft = functools.partial(torch.istft, n_fft=n_fft, hop_length=hop, window=window,
                              center=True, length=length)
    angles = mag * phasor
    previous = None
    for _ in range(n_iter):
        rebuilt = stft(istft(angles))
        z = rebuilt if previous is None else rebuilt - alpha * previous
        angles = z * (mag / (z.abs() + eps))
        previous = rebuilt
    y = istft(angles)
    conv = None
    if want_convergence:
        s = mag.double()
        conv = torch.linalg.vector_norm(s - stft(y).abs(), dim=(-2, -1))
        conv = conv / torch.linalg.vector_norm(s, dim=(-2, -1))
    return y, conv
