"""Functional DSP core: STFT magnitude, mel filterbank and its inverse, fast Griffin-Lim.

Conventions match librosa 0.11 so that spectrograms compare with librosa's: a periodic Hann
window of length ``n_fft``, ``center=True`` with zero padding of ``n_fft // 2`` on both sides
(librosa's default ``pad_mode="constant"``), and the inverse STFT normalised by the
overlap-added squared window. Spectrograms are laid out ``(..., freq, frames)`` with
``freq = n_fft // 2 + 1``.

Every function takes numpy arrays or torch tensors and returns the same kind. For numpy input
(and CPU tensors, unless ``backend="torch"``) Griffin-Lim runs batched FFTs through
``torch.fft`` on buffers shared with numpy, and everything between the FFTs (overlap-add,
window-sum normalisation, framing, the momentum update) in Numba kernels compiled once and
cached on disk; ``benchmarks/griffinlim.py`` measures this against librosa and against keeping
the FFTs in ``scipy.fft``. CUDA tensors use ``torch.stft`` / ``torch.istft`` on the device.
"""

from __future__ import annotations

import functools
import math
import warnings

import numba
import numpy as np
import torch

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
    """out = magnitude * (cos + i sin), all (rows, freq)."""
    n_rows, n_freq = magnitude.shape
    for r in range(n_rows):
        for f in range(n_freq):
            out[r, f] = magnitude[r, f] * (cos[r, f] + 1j * sin[r, f])


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


def _rfft(frames: np.ndarray, out: np.ndarray) -> None:
    torch.fft.rfft(torch.from_numpy(frames), dim=-1, out=torch.from_numpy(out))


def _irfft(spec: np.ndarray, n_fft: int, out: np.ndarray) -> None:
    torch.fft.irfft(torch.from_numpy(spec), n=n_fft, dim=-1, out=torch.from_numpy(out))


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
    spec = _stft(y.reshape(-1, y.shape[-1]).astype(dtype, copy=False), n_fft, hop)
    mag = np.abs(spec).transpose(0, 2, 1)  # (batch, freq, frames)
    return np.ascontiguousarray(mag).reshape(*y.shape[:-1], *mag.shape[-2:])


def _stft(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred STFT of (batch, time) float signals, returned as (batch, frames, freq)."""
    n_batch, size = y.shape
    n_frames = 1 + size // hop
    padded = np.zeros((n_batch, max(size + n_fft, (n_frames - 1) * hop + n_fft)), y.dtype)
    padded[:, n_fft // 2 : n_fft // 2 + size] = y
    frames = np.empty((n_batch, n_frames, n_fft), y.dtype)
    _frame(padded, _window(n_fft, y.dtype.name), hop, frames)
    spec = np.empty((n_batch, n_frames, n_fft // 2 + 1), _complex_dtype(y.dtype))
    _rfft(frames, spec)
    return spec


def spectral_convergence(magnitude, y, n_fft: int = 1024, hop: int = 256):
    """Spectral convergence ``||S - |STFT(y)| ||_F / ||S||_F`` of a waveform against a target.

    Args:
        magnitude: target magnitude ``S``, ``(freq, frames)`` or ``(batch, freq, frames)``.
        y: waveform(s) ``(time,)`` or ``(batch, time)`` whose STFT has the same shape as ``S``.
        n_fft, hop: STFT settings (defaults 1024, 256), conventions as :func:`stft_magnitude`.

    Returns:
        A float for a single spectrogram, one value per item (array or tensor) for a batch.
    """
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
                  htk: bool, norm) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(filterbank, pseudo-inverse, transposed filterbank, 1 / Lipschitz constant), float64."""
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about empty filters at small n_fft
        fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                 htk=htk, norm=norm, dtype=np.float64)
    pinv = np.linalg.pinv(fb)
    step = 1.0 / float(np.linalg.eigvalsh(fb @ fb.T).max())
    for m in (fb, pinv):
        m.flags.writeable = False
    fbt = np.ascontiguousarray(fb.T)
    fbt.flags.writeable = False
    return fb, pinv, fbt, step


def _mel_key(sr, n_fft, n_mels, fmin, fmax, htk, norm):
    if sr <= 0:
        raise ValueError(f"sr must be positive, got {sr!r}")
    if not isinstance(n_fft, (int, np.integer)) or n_fft < 2:
        raise ValueError(f"n_fft must be an integer >= 2, got {n_fft!r}")
    if not isinstance(n_mels, (int, np.integer)) or n_mels < 1:
        raise ValueError(f"n_mels must be a positive integer, got {n_mels!r}")
    fmax = None if fmax is None else float(fmax)
    return float(sr), int(n_fft), int(n_mels), float(fmin), fmax, bool(htk), norm


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
        float32 array ``(n_mels, n_fft // 2 + 1)``; ``mel = filterbank @ linear``.
    """
    fb = _mel_matrices(*_mel_key(sr, n_fft, n_mels, fmin, fmax, htk, norm))[0]
    return fb.astype(np.float32)


def mel_to_linear(mel, sr: float, n_fft: int, *, power: float = 1.0, fmin: float = 0.0,
                  fmax: float | None = None, htk: bool = False, norm="slaney", n_iter: int = 1):
    """Linear-frequency magnitude from a mel spectrogram (the inverse of the mel projection).

    The mel projection ``mel = filterbank @ linear ** power`` has more unknowns than equations;
    this returns a non-negative solution: the filterbank's pseudo-inverse (precomputed and
    cached per setting) applied to ``mel``, clipped at zero, then ``n_iter`` projected-gradient
    steps of the non-negative least-squares problem ``min ||filterbank @ x - mel||`` (what
    ``librosa.feature.inverse.mel_to_stft`` solves iteratively with L-BFGS-B). Clipping and
    each step are projections that never move the estimate away from any non-negative
    spectrum that produces ``mel``, so the true spectrum is approached monotonically.

    Args:
        mel: mel spectrogram ``(..., n_mels, frames)``, non-negative (not log-scaled), numpy
            array or torch tensor.
        sr: sample rate in Hz.
        n_fft: FFT size of the linear spectrogram.
        power: exponent the mel spectrogram was built with: 1 for magnitude (default),
            2 for power.
        fmin, fmax, htk, norm: the filterbank settings, as :func:`mel_filterbank`.
        n_iter: projected-gradient refinement steps (default 1; 0 = clipped pseudo-inverse).

    Returns:
        Magnitude ``(..., n_fft // 2 + 1, frames)``, the same kind, device and (float) dtype as
        ``mel``.
    """
    if mel.ndim < 2:
        raise ValueError(f"mel must have shape (..., n_mels, frames), got {tuple(mel.shape)}")
    if power <= 0:
        raise ValueError(f"power must be positive, got {power!r}")
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter!r}")
    fb, pinv, fbt, step = _mel_matrices(
        *_mel_key(sr, n_fft, int(mel.shape[-2]), fmin, fmax, htk, norm)
    )

    if _is_tensor(mel):
        dtype = mel.dtype if mel.dtype == torch.float64 else torch.float32
        mel = mel.to(dtype)
        fb_t, pinv_t, fbt_t = (torch.as_tensor(m, dtype=dtype, device=mel.device)
                               for m in (fb, pinv, fbt))
        x = (pinv_t @ mel).clamp_(min=0)
        for _ in range(n_iter):
            x = (x - step * (fbt_t @ (fb_t @ x - mel))).clamp_(min=0)
        return x if power == 1 else x.pow_(1.0 / power)

    mel = np.asarray(mel)
    if np.iscomplexobj(mel):
        raise ValueError("mel must be real and non-negative, got a complex array")
    dtype = _real_dtype(mel)
    mel = mel.astype(dtype, copy=False)
    fb, pinv, fbt = (m.astype(dtype) for m in (fb, pinv, fbt))
    x = np.matmul(pinv, mel)
    np.maximum(x, 0, out=x)
    for _ in range(n_iter):
        x -= dtype.type(step) * np.matmul(fbt, np.matmul(fb, x) - mel)
        np.maximum(x, 0, out=x)
    if power != 1:
        np.power(x, dtype.type(1.0 / power), out=x)
    return x


# --------------------------------------------------------------------------- Griffin-Lim


def griffinlim(magnitude, n_fft: int = 1024, hop: int = 256, n_iter: int = 32,
               momentum: float = 0.99, init_phase=None, length: int | None = None,
               return_convergence: bool = False, seed: int | None = 0, backend: str = "auto"):
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
            from the same phase. ``None``: fresh randomness.
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
    if (magnitude.is_complex() if is_tensor else np.iscomplexobj(magnitude)):
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
    if init_phase is not None and tuple(init_phase.shape) != shape:
        raise ValueError(
            f"init_phase has shape {tuple(init_phase.shape)}, magnitude has shape {shape}"
        )
    if is_tensor:
        bad = bool((~torch.isfinite(magnitude)).any() or (magnitude < 0).any())
    else:
        bad = not np.isfinite(magnitude).all() or bool((np.asarray(magnitude) < 0).any())
    if bad:
        raise ValueError("magnitude must be finite and non-negative")

    batched = len(shape) == 3
    alpha = momentum / (1 + momentum)
    if backend == "torch":
        mag = magnitude if is_tensor else torch.from_numpy(np.asarray(magnitude))
        mag = mag if mag.dtype == torch.float64 else mag.float()
        phasor = _initial_phasor_torch(init_phase, shape, seed, mag)
        y, conv = _griffinlim_torch(mag.reshape(-1, n_freq, n_frames),
                                    phasor.reshape(-1, n_freq, n_frames), n_fft, hop, n_iter,
                                    alpha, length, return_convergence)
        if not is_tensor:
            y, conv = y.numpy(), None if conv is None else conv.numpy()
    else:
        mag = magnitude.detach().cpu().numpy() if is_tensor else np.asarray(magnitude)
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


def _random_angles(shape: tuple, seed: int | None) -> np.ndarray:
    # RandomState(seed).random: the same draws as librosa.griffinlim(random_state=seed).
    rng = np.random.default_rng() if seed is None else np.random.RandomState(seed)
    return 2 * np.pi * rng.random(size=shape)


def _initial_angles(init_phase, shape: tuple, seed, mag_t: np.ndarray) -> np.ndarray:
    """magnitude * exp(i * phase) in (batch, frames, freq) layout."""
    n_batch, n_frames, n_freq = mag_t.shape
    if init_phase is None:
        phase = _random_angles(shape, seed)
    else:
        phase = init_phase.detach().cpu().numpy() if _is_tensor(init_phase) else init_phase
        phase = np.asarray(phase)
    phase = phase.reshape(n_batch, n_freq, n_frames).transpose(0, 2, 1)
    angles = np.empty(mag_t.shape, _complex_dtype(mag_t.dtype))
    if np.iscomplexobj(phase):
        absval = np.abs(phase)
        unit = np.where(absval > 0, phase / np.where(absval > 0, absval, 1), 1)
        np.multiply(mag_t, unit, out=angles)
    else:
        _polar(mag_t.reshape(-1, n_freq), np.cos(phase).astype(mag_t.dtype).reshape(-1, n_freq),
               np.sin(phase).astype(mag_t.dtype).reshape(-1, n_freq),
               angles.reshape(-1, n_freq))
    return angles


def _griffinlim_numba(mag_t, angles, n_fft, hop, n_iter, alpha, length, want_convergence):
    """Fast Griffin-Lim on (batch, frames, freq) arrays; FFTs by torch.fft into fixed buffers."""
    n_batch, n_frames, n_freq = mag_t.shape
    dtype = mag_t.dtype
    window = _window(n_fft, dtype.name)
    envelope = _envelope(n_fft, hop, n_frames, length, dtype.name)
    eps = dtype.type(np.finfo(dtype).tiny)
    frames = np.empty((n_batch, n_frames, n_fft), dtype)
    signal = np.empty((n_batch, envelope.size), dtype)
    rebuilt = np.empty_like(angles)
    previous = np.zeros_like(angles)  # finite, so the first update's 0 * previous is 0
    rows = (-1, n_freq)
    for i in range(n_iter):
        _irfft(angles, n_fft, frames)
        _overlap_add(frames, window, envelope, hop, signal)
        _frame(signal, window, hop, frames)
        _rfft(frames, rebuilt)
        _project(rebuilt.reshape(rows), previous.reshape(rows), mag_t.reshape(rows),
                 angles.reshape(rows), dtype.type(alpha if i else 0.0), eps)
        rebuilt, previous = previous, rebuilt
    _irfft(angles, n_fft, frames)
    _overlap_add(frames, window, envelope, hop, signal)
    y = np.ascontiguousarray(signal[:, n_fft // 2 : n_fft // 2 + length])
    conv = None
    if want_convergence:
        # the zero-masked signal is the padded y, so its frames are the STFT frames of y
        _frame(signal, window, hop, frames)
        _rfft(frames, rebuilt)
        conv = np.empty(n_batch)
        _convergence(rebuilt, mag_t, conv)
    return y, conv


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
