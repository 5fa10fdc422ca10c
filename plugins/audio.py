"""The audio domain: speech and other recordings as mono waveforms.

Reads WAV, FLAC, OGG and MP3 with soundfile (libsndfile), falling back to librosa (audioread)
for what soundfile cannot decode; stereo is mixed to mono. The sample keeps its own rate;
encoders resample to theirs. Writes WAV or FLAC (the input's container when it is one of those,
else WAV), limited to [-1, 1] by scaling rather than clipping.
"""

from __future__ import annotations

import dataclasses
import logging
import string
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import styletx
from styletx import FolderSamples
from styletx.audio import (
    FEATURE_DEFAULTS,
    AudioSample,
    SpectrogramEncoder,
    is_silent,
    joined,
    pieces_at_pauses,
    resampled,
)

TRIM_TOP_DB = 40.0  # trailing/leading parts this far below the peak count as silence
WRITABLE = {".wav": "WAV", ".flac": "FLAC"}
PAIR_LENGTHS = 2.0  # compare: a pair this many times longer than the other is not the same words
CLIPPED_SHARE = 0.001  # training_flaw: more samples than this at the peak: the file is clipped
NARROW_BAND = 1.25  # compare_folders: a file whose band is this many times narrower than its
#                     folder's widest is named (16 kHz beside 22.05 kHz and more: yes)


log = logging.getLogger("styletx")


def _warn_if_not_the_same_words(converted: AudioSample, target: AudioSample) -> None:
    """Voice metrics align two utterances of the same words; a pair of very different lengths
    (a misnamed file, a whole reading beside one sentence) gives scores that mean nothing."""
    longer, shorter = sorted((converted.seconds, target.seconds), reverse=True)
    if longer > PAIR_LENGTHS * max(shorter, 1e-3):
        log.warning("the input is %.1f s long and its pair %.1f s: are they the same words? "
                    "the scores assume so", converted.seconds, target.seconds)


def clipped_share(wave: np.ndarray) -> float:
    """The share of ``wave``'s samples that lie, with the sample after them, within two 16-bit
    steps of its peak: the flat tops of clipping (at full scale, or below it when the clipped
    recording was turned down afterwards). A recording that is not clipped has none or one
    such pair (real speech: 0.001-0.003 %); one clipped by as little as 1.3x gain, 0.3-1.8 %.
    Pairs, not single samples: a clip of a few milliseconds has its peak sample as a
    measurable share of its length without being clipped."""
    magnitude = np.abs(wave)
    peak = float(magnitude.max()) if magnitude.size else 0.0
    if peak < 1e-3:  # silence: every sample is "at the peak"
        return 0.0
    at_peak = magnitude >= peak - 2 / 32768
    return float(np.count_nonzero(at_peak[1:] & at_peak[:-1])) / magnitude.size


def _read(path: Path) -> tuple[np.ndarray, int, str]:
    """(samples, channels) float32, rate, format; raises BadInputError for unusable files."""
    if not path.exists():
        raise styletx.BadInputError(path, "no such file")
    if path.is_dir():
        raise styletx.BadInputError(path, "not a file")
    if path.stat().st_size == 0:
        raise styletx.BadInputError(path, "empty file (0 bytes)")
    try:  # libsndfile would call a file it may not read "unreadable audio"; say why
        path.open("rb").close()
    except PermissionError:
        raise styletx.BadInputError(path, "cannot read file (permission denied)") from None
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        info = sf.info(path)
    except sf.LibsndfileError as exc:
        data, rate, fmt = _read_with_librosa(path, exc)
    except (RuntimeError, ValueError, OSError) as exc:
        raise styletx.BadInputError(path, f"corrupt or unreadable audio ({exc})") from None
    else:
        fmt = info.format
        if fmt == "MP3":
            _refuse_truncated_mp3(path, len(data), info.frames, rate)
    return data, rate, fmt


MP3_FRAME = 1152  # samples in an MPEG-1 layer III frame


def _refuse_truncated_mp3(path: Path, decoded: int, declared: int, rate: int) -> None:
    """A cut-off MP3 (a download or copy that stopped) decodes without an error, only
    shorter. Its length header (Xing, Info or VBRI, which encoders write in the first frame)
    still says how long it was; without such a header libsndfile estimates the length from
    the file's size, which says nothing of a cut."""
    if decoded >= declared - max(2 * MP3_FRAME, declared // 100) or not _has_length_header(path):
        return
    raise styletx.BadInputError(path, f"truncated: it decodes to {decoded / rate:.1f} s of the "
                                      f"{declared / rate:.1f} s its header declares")


def _has_length_header(path: Path) -> bool:
    """Whether the first MPEG frame, after any ID3v2 tag, holds a length header."""
    with path.open("rb") as file:
        head = file.read(10)
        if head[:3] == b"ID3" and len(head) == 10:  # skip the tag: 4 bytes of 7 bits each
            size = sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(head[6:10]))
            file.seek(10 + size + (10 if head[5] & 0x10 else 0))  # with a footer
            head = b""
        frame = head + file.read(200)
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


# warnings.catch_warnings swaps the process's one filter list: two threads reading at once
# (styletx.engine.data.Reader) could each restore the other's filters
_WARNING_FILTERS = threading.Lock()


def _read_with_librosa(path: Path, first_error: Exception) -> tuple[np.ndarray, int, str]:
    """The fallback for containers libsndfile does not know (e.g. MP4/AAC via audioread)."""
    import librosa

    try:
        with _WARNING_FILTERS, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns before falling back to audioread
            wave, rate = librosa.load(path, sr=None, mono=True)
    except Exception:  # noqa: BLE001 -- audioread and its backends raise many types
        problem = str(first_error).lower()
        if "format not recognised" in problem or "unknown format" in problem:
            raise styletx.BadInputError(path, "not an audio file (unrecognised format)") from None
        if "not a regular file" in problem:  # what libsndfile says of an MP3 it cannot decode
            raise styletx.BadInputError(
                path, f"corrupt, or not {path.suffix.lstrip('.').upper() or 'audio'} data "
                      "(it cannot be decoded)") from None
        raise styletx.BadInputError(path, f"corrupt or unreadable audio ({first_error})") from None
    return wave[:, None].astype(np.float32), int(rate), path.suffix.lstrip(".").upper()


METRIC_RATE = 22050  # Hz: evaluation measures every wave at this rate


class AudioDomain(styletx.Domain):
    """Audio files read with soundfile (librosa as the fallback), written as WAV or FLAC."""

    name = "audio"
    extensions = (".wav", ".flac", ".ogg", ".mp3")
    flip_augment = False  # speech reversed in time is not speech
    chunk_frames = 256  # conversion works on ~3 s chunks (at 22.05 kHz, hop 256) ...
    chunk_overlap = 32  # ... cross-faded over ~0.37 s
    pairs_by_time = True  # parallel utterances differ in pace: align them by DTW
    metrics = {"mcd_db": "lower", "f0_rmse_cents": "lower"}
    # frame matching on a learnt content code: nearer the target voice than the voice CycleGAN
    # on two pairs of real-speaker voices, converting in half the time (benchmarks/RESULTS.md,
    # "Match"); --model cyclegan for the other
    default_translator = "match"

    def load(self, path: Path) -> AudioSample:
        path = Path(path)
        data, rate, fmt = _read(path)
        if data.shape[0] == 0:
            raise styletx.BadInputError(path, "no audio samples in the file")
        wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if not np.all(np.isfinite(wave)):
            raise styletx.BadInputError(path, "audio contains NaN or infinite samples")
        # pure silence loads: it converts to silence, and training refuses it (below)
        return AudioSample(np.ascontiguousarray(wave, np.float32), int(rate), fmt)

    def save(self, sample: AudioSample, path: Path) -> None:
        """WAV (float32 is not needed: 16-bit PCM) or FLAC by suffix; never clips."""
        path = Path(path)
        fmt = WRITABLE.get(path.suffix.lower())
        if fmt is None:
            raise styletx.UsageError(f"{path}: audio is written as .wav or .flac")
        wave = sample.wave
        peak = float(np.abs(wave).max()) if wave.size else 0.0
        if peak > 1.0:
            wave = wave / peak  # scale down instead of clipping
        sf.write(path, wave, sample.rate, format=fmt, subtype="PCM_16")

    def output_name(self, source: Path) -> str:
        source = Path(source)
        return source.name if source.suffix.lower() in WRITABLE else source.stem + ".wav"

    def conversion_pieces(self, sample: AudioSample) -> list[AudioSample]:
        """A recording longer than a minute in pieces of at most a minute, each cut at a
        pause (``pieces_at_pauses``)."""
        return pieces_at_pauses(sample)

    def join_converted(self, pieces: list[AudioSample]) -> AudioSample:
        return joined(pieces)

    def compare_folders(self, samples: dict[str, Sequence[AudioSample]]) -> list[str]:
        """Recordings of narrower band than the rest of their folder (say, 8 kHz phone audio
        among 44.1 kHz files) hold nothing above half their rate, and the model learns that
        as part of the voice (a trial's previews were cut at 4 kHz in both rows). The fewer
        kind is named (the first five files): one 44.1 kHz file among 16 kHz ones is the odd
        one out, not the 31 others."""
        warnings = []
        for side, items in samples.items():
            bands = [min(s.rate, METRIC_RATE) / 2 for s in items]
            widest = max(bands, default=0.0)
            narrow = [i for i, band in enumerate(bands) if band < widest / NARROW_BAND]
            if not narrow:
                continue
            wide = [i for i, band in enumerate(bands) if band >= widest / NARROW_BAND]
            top = 2 * max(bands[i] for i in narrow)
            folder = f"{side.upper()}_DIR"
            low = f"at {top:g} Hz or less (nothing above {top / 2:g} Hz)"
            fewer = narrow if len(narrow) <= len(wide) else wide  # the odd ones out, named
            named = FolderSamples.named(items, fewer)
            if fewer is narrow:
                warnings.append(
                    f"{len(narrow)} of the {len(items)} {folder} files{named} "
                    f"are sampled {low}, the others at {2 * widest:g} Hz or more: the "
                    "model learns the missing band as part of the voice; leave them out, or "
                    "record all alike")
            else:
                warnings.append(
                    f"{len(wide)} of the {len(items)} {folder} files{named} are "
                    f"sampled at {2 * widest:g} Hz or more, the other {len(narrow)} "
                    f"{low}: the model learns the band those lack as part of the voice; leave "
                    f"the {len(wide)} out, or record all alike")
        return warnings

    def from_array(self, array: np.ndarray) -> AudioSample:
        raise styletx.UsageError(
            "audio arrays need a sample rate: use AudioSample(wave, rate) and Run.convert_sample"
        )

    def to_array(self, sample: AudioSample) -> np.ndarray:
        return sample.wave

    def describe(self, samples: Sequence[AudioSample]) -> str:
        seconds = sum(s.seconds for s in samples)
        return (f"{len(samples)} readable audio file(s), {seconds / 60:.1f} min after trimming "
                "silence")

    def default_encoder(self, samples: Sequence[AudioSample]) -> str:
        return "mel"

    def compare(self, converted: AudioSample, target: AudioSample) -> dict[str, float]:
        """Mel-cepstral distortion and log-F0 RMSE (cents) against the target saying the same
        words, after DTW alignment (``styletx.audio.metrics``). Both are measured at
        ``METRIC_RATE`` (MCD depends on the rate), so scores of inputs, outputs and models at
        other rates compare. An F0 RMSE that cannot be measured (no frame voiced in both) is
        NaN."""
        from styletx.audio.metrics import log_f0_rmse, mcd

        _warn_if_not_the_same_words(converted, target)
        x, y = (resampled(s, METRIC_RATE) for s in (converted, target))
        result = {"mcd_db": mcd(x, y, METRIC_RATE)}
        try:
            result["f0_rmse_cents"] = log_f0_rmse(x, y, METRIC_RATE)
        except ValueError:
            result["f0_rmse_cents"] = float("nan")
        return result

    def prepare_for_training(self, sample: AudioSample, size: int) -> AudioSample:
        """Leading and trailing silence trimmed (it would teach the model nothing); a file of
        pure silence is refused (the engine names it)."""
        import librosa

        if is_silent(sample.wave):
            raise styletx.BadInputError("", "pure silence (no signal above -80 dBFS)")
        wave, _ = librosa.effects.trim(sample.wave, top_db=TRIM_TOP_DB)
        return dataclasses.replace(sample, wave=np.ascontiguousarray(wave))

    def training_flaw(self, sample: AudioSample) -> str | None:
        """Clipping: a recording made too loud has flat tops at its peak, a distortion the
        model would learn as part of the voice (and put into every conversion)."""
        share = clipped_share(sample.wave)
        if share > CLIPPED_SHARE:
            return f"clipped: {100 * share:.1f} % of its samples flat at its peak"
        return None

    def training_crop(self, size: int) -> tuple[int | None, int]:
        return None, size  # every frequency bin, ``size`` frames

    def save_preview(self, rows, encoders, stem: Path, titles=None) -> None:
        """Spectrograms with time and frequency axes, in dB, as ``stem.png``, and the audio of
        every tile as ``stem-<row><col>.wav``, rows lettered a, b, c, ... (in a training preview
        ``-a1`` is A translated to B)."""
        from styletx.audio.previews import save_spectrogram_grid

        save_spectrogram_grid(rows, encoders, stem.with_suffix(".png"), titles)
        for side, row, row_encoders in zip(string.ascii_lowercase, rows, encoders):
            for col, (tensor, encoder) in enumerate(zip(row, row_encoders)):
                clip = stem.with_name(f"{stem.name}-{side}{col}.wav")
                self.save(encoder.decode(tensor.float().cpu()), clip)


# -----------------------------------------------------------------------------
# the encoders: normalised log spectrograms, inverted by Griffin-Lim (styletx.audio's base)

class MelEncoder(SpectrogramEncoder):
    """Log-mel spectrogram (128 bins at 22.05 kHz by default), inverted by a decoder network
    fitted on the voice's own recordings (``decoder_epochs``; 0: none) on top of a clipped mel
    pseudo-inverse, and Griffin-Lim.

    A run saved without the decoder's tensors (styletx before 0.2, or ``decoder_epochs=0``)
    decodes with the pseudo-inverse alone, as it did."""

    name = "mel"
    stft_frames = True
    defaults = {**FEATURE_DEFAULTS,
                "gl_iters": 64,  # the learned decoder's sharper harmonics gain from more
                "decoder_epochs": 40}  # passes of the learned decoder's fit over the
    #                                    recordings (0: no learned decoder), at most 1000 steps

    def __init__(self, **params):
        super().__init__(**params)
        self.decoder = None  # a fitted styletx.audio.decoder.MelToLinear, or None

    def _needs(self) -> list[tuple[str, bool]]:
        epochs = self.params["decoder_epochs"]
        return [*super()._needs(), (f"decoder_epochs >= 0 (decoder_epochs={epochs})", epochs >= 0)]

    @property
    def bins(self) -> int:
        return self.params["n_mels"]

    def _mel_args(self) -> dict:
        p = self.params
        return dict(sr=p["rate"], n_fft=p["n_fft"], n_mels=p["n_mels"], fmin=p["fmin"],
                    fmax=p["fmax"])

    def log_spectrogram(self, wave: np.ndarray) -> np.ndarray:
        from styletx.audio.dsp import stft_magnitude

        p = self.params
        return self._log_mel(stft_magnitude(wave, p["n_fft"], p["hop"]))

    def _log_mel(self, magnitude: np.ndarray) -> np.ndarray:
        from styletx.audio.dsp import mel_filterbank

        return np.log(np.maximum(mel_filterbank(**self._mel_args()) @ magnitude,
                                 self.params["log_floor"]))

    def linear_magnitude(self, log_spec: np.ndarray) -> np.ndarray:
        pinv = self._pseudo_inverse(log_spec)
        if self.decoder is None:
            return pinv
        normalised = (log_spec - self.mean[:, None]) / self.std[:, None]
        items = torch.from_numpy(normalised.astype(np.float32)).reshape(-1, *log_spec.shape[-2:])
        with torch.no_grad():  # one item at a time: a batched convolution rounds differently,
            #                    and decode_batch must give what decode gives
            correction = torch.cat([self.decoder(item[None]) for item in items])
        correction = correction.numpy().reshape(pinv.shape)
        return np.exp(np.log(np.maximum(pinv, self.params["log_floor"])) + correction)

    def _pseudo_inverse(self, log_spec: np.ndarray) -> np.ndarray:
        from styletx.audio.dsp import mel_to_linear

        p = self.params
        return mel_to_linear(np.exp(log_spec), sr=p["rate"], n_fft=p["n_fft"], fmin=p["fmin"],
                             fmax=p["fmax"])

    def fit(self, samples: Sequence[AudioSample]) -> None:
        """Statistics and decoder from one pass over the recordings (resampling and the STFT
        are the costly part)."""
        from styletx.audio.dsp import stft_magnitude

        p = self.params
        waves = [self.wave_to_encode(s) for s in samples]
        linear = np.concatenate([stft_magnitude(w, p["n_fft"], p["hop"]) for w in waves], axis=1)
        self._fit_pitch(waves)
        del waves  # the decoder's fit below needs only the spectrograms
        log_mel = self._log_mel(linear)
        self._fit_statistics(log_mel)
        self.decoder = None
        if p["decoder_epochs"] > 0:
            self.decoder = self._fit_decoder(linear, log_mel)

    def _fit_decoder(self, linear: np.ndarray, log_mel: np.ndarray):
        """The decoder network, trained to turn these mels into their magnitudes."""
        from styletx.audio.decoder import fit_mel_decoder, training_steps

        p = self.params
        return fit_mel_decoder(
            (log_mel - self.mean[:, None]) / self.std[:, None],
            np.log(np.maximum(self._pseudo_inverse(log_mel), p["log_floor"])),
            np.log(np.maximum(linear, p["log_floor"])),
            training_steps(linear.shape[1], p["decoder_epochs"]))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if self.decoder is not None:
            state.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Statistics and, when the state has them, the decoder's weights."""
        from styletx.audio.decoder import MelToLinear

        super().load_state_dict(state)
        decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        self.decoder = MelToLinear.from_state_dict(decoder).eval() if decoder else None


class StftEncoder(SpectrogramEncoder):
    """Log-magnitude linear spectrogram (n_fft / 2 + 1 bins), inverted by Griffin-Lim."""

    name = "stft"
    stft_frames = True
    defaults = {k: v for k, v in FEATURE_DEFAULTS.items() if k not in ("n_mels", "fmin", "fmax")}

    @property
    def bins(self) -> int:
        return self.params["n_fft"] // 2 + 1

    def log_spectrogram(self, wave: np.ndarray) -> np.ndarray:
        from styletx.audio.dsp import stft_magnitude

        p = self.params
        return np.log(np.maximum(stft_magnitude(wave, p["n_fft"], p["hop"]), p["log_floor"]))

    def linear_magnitude(self, log_spec: np.ndarray) -> np.ndarray:
        return np.exp(log_spec)


@styletx.hookimpl
def register_domains(register):
    register(AudioDomain)


@styletx.hookimpl
def register_encoders(register):
    register(MelEncoder)
    register(StftEncoder)
