"""Griffin-Lim and mel -> linear inversion: styletx.audio.dsp against librosa, measured in one run.

    python benchmarks/griffinlim.py            # full (a few minutes on 2 busy cores)
    python benchmarks/griffinlim.py --quick    # fewer repeats

A 10 s speech-like signal at 22.05 kHz is generated offline (a harmonic source with a drifting
F0 through vowel formant resonators, fricative noise bursts and pauses), and its STFT magnitude
(n_fft 1024, hop 256, float32) is the target.

Fair comparison: both Griffin-Lims start from the same random phase. ``librosa.griffinlim(S,
init="random", random_state=0)`` draws ``2 pi * RandomState(0).random(S.shape)``, which is what
``styletx.audio.dsp.griffinlim(S, seed=0)`` draws
(librosa's ``init=None`` would be zero phase instead).
Both run the same momentum update (0.99) for the same number of iterations, and both results are
scored by the same function (``styletx.audio.dsp.spectral_convergence``, whose STFT matches
``librosa.stft``). Each repeat times every method once, in turn, so background load affects all
alike; the table gives the median.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
import warnings

import librosa
import numpy as np
import scipy.fft
import scipy.signal
import torch

from styletx.audio import dsp

SR, N_FFT, HOP, N_MELS = 22050, 1024, 256, 80


def speech_like(seconds: float = 10.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A speech-like float32 waveform: voiced syllables, fricatives and pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.3 * t + 1.0) + 15 * np.sin(2 * np.pi * 2.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    source = sum(np.sin(h * phase) / h * (h * f0 < sr / 2 - 200) for h in range(1, 61))
    source = source + 0.02 * rng.standard_normal(n)
    vowels = np.array([[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480],
                       [570, 840, 2410], [300, 870, 2240], [660, 1720, 2410], [490, 1350, 1690]])
    out = np.zeros(n)
    pos = 0
    while pos < n:
        if rng.random() < 0.12:  # pause
            pos += int(rng.uniform(0.15, 0.4) * sr)
            continue
        seg = slice(pos, min(n, pos + int(rng.uniform(0.12, 0.3) * sr)))
        m = seg.stop - seg.start
        if rng.random() < 0.2:  # fricative: high-passed noise
            b, a = scipy.signal.butter(4, rng.uniform(3000, 5000) / (sr / 2), "high")
            x = 0.15 * scipy.signal.lfilter(b, a, rng.standard_normal(m))
        else:  # vowel: source through three formant resonators
            x = np.zeros(m)
            for f, bw in zip(vowels[rng.integers(len(vowels))] * rng.uniform(0.9, 1.1),
                             (80, 100, 120)):
                r, th = np.exp(-np.pi * bw / sr), 2 * np.pi * f / sr
                x += scipy.signal.lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], source[seg])
        out[seg] += x * np.hanning(m) ** 0.5
        pos += int(m * 0.85)
    return (out / (1.1 * np.abs(out).max())).astype(np.float32)


def interleaved(methods: dict, repeats: int, inner: dict | None = None) -> dict:
    """Median seconds per call; every repeat runs each method in turn (``inner[name]`` calls
    in a row for methods too quick to time one call at a time)."""
    inner = inner or {}
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, (setup, fn) in methods.items():
            setup()
            calls = inner.get(name, 1)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: float(np.median(t)) for name, t in times.items()}


def threads(n: int):
    """A setup step: torch's intra-op threads (used by the torch rows only)."""
    return lambda: torch.set_num_threads(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    reps = {32: 3, 100: 3} if args.quick else {32: 9, 100: 5}
    nnls_reps = 1 if args.quick else 3
    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()

    y = speech_like()
    S = dsp.stft_magnitude(y, N_FFT, HOP)
    print(f"signal: {len(y) / SR:.1f} s speech-like at {SR} Hz; magnitude {S.shape} {S.dtype}; "
          f"n_fft {N_FFT}, hop {HOP}, momentum 0.99, same random initial phase for all")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"torch {torch.__version__} ({default_threads} threads by default); "
          f"librosa {librosa.__version__}")

    def lib(n):
        return librosa.griffinlim(S, n_iter=n, hop_length=HOP, n_fft=N_FFT, momentum=0.99,
                                  init="random", random_state=0)

    def ours(n, backend="numba"):  # torch: the torch.stft / torch.istft path, on the CPU
        return dsp.griffinlim(S if backend == "numba" else torch.from_numpy(S), N_FFT, HOP, n,
                              momentum=0.99, seed=0, backend=backend)

    for n in (2, 2):  # warm-up: Numba compiles (or loads its disk cache) on the first call
        ours(n), ours(n, "torch"), lib(n)

    print("\nGriffin-Lim (time: median of repeats; SC: spectral convergence, lower is better)")
    print(f"{'iters':>5}  {'method':<42} {'time ms':>9} {'SC':>10} {'speed-up':>9}")
    for n_iter in (32, 100):
        methods = {
            "librosa.griffinlim": (threads(default_threads), lambda n=n_iter: lib(n)),
            "styletx (Numba, 1 thread)": (threads(default_threads), lambda n=n_iter: ours(n)),
            # for information; with more threads it is at the mercy of other processes (see
            # the FFT strategies below)
            "styletx torch CPU path (1 thread)": (threads(1), lambda n=n_iter: ours(n, "torch")),
        }
        times = interleaved(methods, reps[n_iter])
        torch.set_num_threads(default_threads)
        outputs = {"librosa": lib(n_iter), "styletx (Numba": ours(n_iter),
                   "styletx torch": ours(n_iter, "torch")}
        scs = {}
        for name, seconds in times.items():
            out = next(v for k, v in outputs.items() if name.startswith(k))
            scs[name] = sc = dsp.spectral_convergence(S, out, N_FFT, HOP)
            ratio = times["librosa.griffinlim"] / seconds
            print(f"{n_iter:>5}  {name:<42} {seconds * 1e3:>9.1f} {sc:>10.6f} {ratio:>8.1f}x")
        ratio = times["librosa.griffinlim"] / times["styletx (Numba, 1 thread)"]
        same = scs["styletx (Numba, 1 thread)"] <= scs["librosa.griffinlim"] + 1e-5
        print(f"{'':>5}  -> styletx {ratio:.1f}x faster, spectral convergence "
              f"{'equal or better' if same else 'WORSE'}; target >= 4x: "
              f"{'met' if ratio >= 4 and same else 'NOT met'}")

    print("\nMel -> linear magnitude (80 mels; error: ||S_hat - S||_F / ||S||_F, true S)")
    print(f"{'power':>5}  {'method':<42} {'time ms':>9} {'rel err':>9} {'speed-up':>9}")
    fb = dsp.mel_filterbank(SR, N_FFT, N_MELS)
    default = threads(default_threads)
    for power in (1.0, 2.0):
        mel = fb @ S**power

        def nnls(m=mel, p=power):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return librosa.feature.inverse.mel_to_stft(m, sr=SR, n_fft=N_FFT, power=p)

        methods = {"librosa mel_to_stft (NNLS)": (default, nnls)}
        for steps, note in ((10, " (default)"), (0, ""), (50, "")):
            methods[f"styletx mel_to_linear n_iter={steps}{note}"] = (
                default, lambda m=mel, p=power, k=steps: dsp.mel_to_linear(m, SR, N_FFT, power=p,
                                                                           n_iter=k))
        for _, fn in methods.values():
            fn()
        quick = {name: 20 for name in methods if name.startswith("styletx")}
        times = interleaved(methods, nnls_reps, quick)
        for name, seconds in times.items():
            err = np.linalg.norm(methods[name][1]() - S) / np.linalg.norm(S)
            ratio = times["librosa mel_to_stft (NNLS)"] / seconds
            print(f"{power:>5.0f}  {name:<42} {seconds * 1e3:>9.2f} {err:>9.5f} {ratio:>8.0f}x")

    fft_strategies(S, reps[32], default_threads)
    torch.set_num_threads(default_threads)
    print(f"\nload average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"date: {datetime.date.today().isoformat()}")


def fft_strategies(S: np.ndarray, repeats: int, default_threads: int) -> None:
    """The Numba path's loop (32 iterations, same input) with its FFTs in different places."""
    mag_t = np.ascontiguousarray(S.T)[None]
    angles = dsp._initial_angles(None, S.shape, 0, mag_t)
    window = dsp._window(N_FFT, "float32")
    envelope = dsp._envelope(N_FFT, HOP, S.shape[1], HOP * (S.shape[1] - 1), "float32")
    alpha, eps = np.float32(0.99 / 1.99), np.float32(np.finfo(np.float32).tiny)
    results = {}

    def run(name, loop, **fft):
        def fn():
            signal = np.empty((1, envelope.size), np.float32)
            loop(angles.copy(), mag_t, window, envelope, HOP, 32, alpha, eps, signal, **fft)
            results[name] = signal[0, N_FFT // 2 : N_FFT // 2 + HOP * (S.shape[1] - 1)]
        return fn

    def torch_rfft(x):
        return torch.fft.rfft(torch.from_numpy(x), dim=-1).numpy()

    def torch_irfft(x, n):
        return torch.fft.irfft(torch.from_numpy(x), n=n, dim=-1).numpy()

    names = {
        "rocket": "rocket-fft, whole loop in @njit",
        "scipy": "scipy.fft (1 worker) + Numba kernels",
        "torch1": "torch.fft (1 thread) + Numba kernels",
        "torchN": f"torch.fft ({default_threads} threads) + Numba kernels",
    }
    methods = {
        names["scipy"]: (threads(default_threads), run(names["scipy"], dsp._griffinlim_pyloop)),
        names["torch1"]: (threads(1), run(names["torch1"], dsp._griffinlim_pyloop,
                                          rfft=torch_rfft, irfft=torch_irfft)),
        names["torchN"]: (threads(default_threads), run(names["torchN"], dsp._griffinlim_pyloop,
                                                        rfft=torch_rfft, irfft=torch_irfft)),
    }
    if dsp.FFT_BACKEND == "rocket-fft":
        methods = {names["rocket"]: (threads(default_threads),
                                     run(names["rocket"], dsp._griffinlim_loop)), **methods}
    for setup, fn in methods.values():
        setup()
        fn()
    times = interleaved(methods, repeats)
    used = names["rocket"] if dsp.FFT_BACKEND == "rocket-fft" else names["scipy"]
    print(f"\nFFT strategy of the Numba path (32 iterations; used: {used})")
    print(f"       {'strategy':<42} {'time ms':>9} {'SC':>9} {'vs used':>9}")
    for name, seconds in times.items():
        sc = dsp.spectral_convergence(S, results[name], N_FFT, HOP)
        print(f"       {name:<42} {seconds * 1e3:>9.1f} {sc:>9.5f} "
              f"{times[used] / seconds:>8.2f}x")
    if dsp.FFT_BACKEND != "rocket-fft":
        print("       rocket-fft: not installed")


if __name__ == "__main__":
    main()
