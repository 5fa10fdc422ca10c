"""The audio domain: formats, mono mixing, silence trimming, writing without clipping, and the
one-line errors for unusable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from styletx.contract.errors import BadInputError
from styletx.plugins.audio import AudioDomain, AudioSample

RATE = 22050


def tone(seconds=0.5, freq=220.0, amp=0.3):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("suffix, fmt, subtype", [
    (".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"),
    (".ogg", "OGG", "VORBIS"), (".mp3", "MP3", "MPEG_LAYER_III"),
])
def test_reads_each_format_and_mixes_stereo_to_mono(tmp_path, suffix, fmt, subtype):
    left, right = tone(freq=220), tone(freq=330)
    path = tmp_path / f"voice{suffix}"
    sf.write(path, np.stack([left, right], axis=1), RATE, format=fmt, subtype=subtype)
    sample = AudioDomain().load(path)
    assert sample.rate == RATE and sample.format == fmt and sample.wave.ndim == 1
    assert abs(len(sample.wave) - len(left)) < 0.05 * RATE  # codecs may pad a little
    if fmt in ("WAV", "FLAC"):  # lossless: exactly the mean of the channels
        assert np.allclose(sample.wave, (left + right) / 2, atol=1e-4)


def test_writes_wav_and_flac_without_clipping(tmp_path):
    loud = AudioSample(tone(amp=1.0) * 1.7, RATE)
    domain = AudioDomain()
    for suffix in (".wav", ".flac"):
        domain.save(loud, tmp_path / f"out{suffix}")
        back, rate = sf.read(tmp_path / f"out{suffix}", dtype="float32")
        assert rate == RATE and np.abs(back).max() <= 1.0
        ratio = back / np.where(np.abs(loud.wave) > 0.1, loud.wave, np.nan)
        assert np.nanstd(ratio) < 1e-3  # scaled as a whole, not clipped


def test_output_container_follows_the_input():
    domain = AudioDomain()
    assert domain.output_name(Path("a/b.flac")) == "b.flac"
    assert domain.output_name(Path("a/b.mp3")) == "b.wav"
    assert domain.output_name(Path("a/b.ogg")) == "b.wav"


def test_training_preparation_trims_silence():
    wave = np.concatenate([np.zeros(RATE, np.float32), tone(1.0), np.zeros(RATE, np.float32)])
    trimmed = AudioDomain().prepare_for_training(AudioSample(wave, RATE), 64)
    assert 0.9 * RATE < len(trimmed.wave) < 1.2 * RATE


def test_pure_silence_loads_and_training_refuses_it_by_name(tmp_path):
    """Silence converts to silence (a clip from a segmenter may be empty); training has
    nothing to learn from it and skips it, naming the file."""
    from styletx.engine.data import Reader

    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(RATE, np.float32), RATE)
    assert not AudioDomain().load(path).wave.any()
    with pytest.raises(BadInputError) as err:
        Reader(AudioDomain(), 64).sample(path)
    assert str(err.value) == f"{path}: pure silence (no signal above -80 dBFS)"


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_text("just some text, not a recording"), "not an audio file"),
    (lambda p: (sf.write(p.with_suffix(".flac"), tone(2.0), RATE),
                p.write_bytes(p.with_suffix(".flac").read_bytes()[:3000])), "corrupt"),
])
def test_unusable_files_get_one_line_errors(tmp_path, make, problem):
    path = tmp_path / "bad.wav"
    make(path)
    if problem == "corrupt":
        path = path.rename(tmp_path / "bad.flac")
    with pytest.raises(BadInputError) as err:
        AudioDomain().load(path)
    assert problem in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_text_named_mp3_is_not_called_a_missing_file(tmp_path):
    """libsndfile's mpg123 said "File does not exist or is not a regular file (possibly a
    pipe?)" of a text file named .mp3, which exists."""
    path = tmp_path / "fake.mp3"
    path.write_text("just some text, not a recording")
    with pytest.raises(BadInputError) as err:
        AudioDomain().load(path)
    assert str(err.value) == f"{path}: corrupt, or not MP3 data (it cannot be decoded)"


@pytest.mark.parametrize("tag", [b"", b"ID3\x04\x00\x00\x00\x00\x00\x0c" + b"\x00" * 12])
def test_a_cut_off_mp3_is_refused_by_its_length_header(tmp_path, tag):
    """An MP3 whose copy stopped half-way decoded without a word as a shorter recording; its
    Xing header (after an ID3v2 tag, when there is one) still says how long it was."""
    whole = tmp_path / "whole.mp3"
    sf.write(whole, tone(seconds=4.0), RATE)
    data = tag + whole.read_bytes()
    whole.write_bytes(data)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[:len(data) // 2])
    assert AudioDomain().load(whole).seconds == pytest.approx(4.0, abs=0.05)
    with pytest.raises(BadInputError) as err:
        AudioDomain().load(cut)
    assert str(err.value).startswith(f"{cut}: truncated: it decodes to ")
    assert str(err.value).endswith(" s of the 4.0 s its header declares")


def test_a_cut_mp3_without_a_length_header_is_read_as_it_decodes(tmp_path):
    """No header to say how long it was (libsndfile then estimates the length from the file's
    size): nothing to refuse it by, and nothing refused by mistake."""
    whole = tmp_path / "whole.mp3"
    sf.write(whole, tone(seconds=4.0), RATE)
    data = whole.read_bytes().replace(b"Xing", b"Xxxx").replace(b"Info", b"Ixxx")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[:len(data) // 2])
    assert 0 < AudioDomain().load(cut).seconds < 4.0  # loaded, not refused


def test_unsupported_extension_is_not_handled(tmp_path):
    assert not AudioDomain().handles(tmp_path / "song.aac")
    assert AudioDomain().handles(tmp_path / "SONG.MP3")


# -- encoders ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voices():
    from styletx.audio.synth import HIGH, LOW, utterance

    return {"low": AudioSample(utterance(LOW, 1.5, seed=0), RATE),
            "high": AudioSample(utterance(HIGH, 1.5, seed=1), RATE)}


@pytest.mark.parametrize("name, bins", [("mel", 128), ("stft", 513)])
def test_encoder_round_trip(voices, name, bins):
    from styletx.audio.metrics import mcd
    from styletx.plugins.audio import MelEncoder, StftEncoder

    encoder = {"mel": MelEncoder, "stft": StftEncoder}[name]()
    encoder.fit([voices["low"]])
    x = encoder.encode(voices["low"])
    assert x.shape[:2] == (1, bins) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 0.05  # fitted statistics
    back = encoder.decode(x, like=voices["low"])
    assert back.rate == RATE and len(back.wave) == len(voices["low"].wave)
    assert mcd(back.wave, voices["low"].wave, RATE) < 2.0  # dB; the two voices differ by far more


def test_encoder_state_and_resampling(voices):
    from styletx.plugins.audio import MelEncoder

    a = MelEncoder(n_mels=64, rate=16000)
    a.fit([voices["high"]])
    b = MelEncoder(**a.params)
    b.load_state_dict(a.state_dict())
    x = b.encode(voices["high"])  # 22.05 kHz input resampled to 16 kHz
    assert x.shape[1] == 64 and torch.equal(x, a.encode(voices["high"]))
    assert b.decode(x).rate == 16000


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("length", [1, 255, 256, 4410, 9999])
def test_the_encoded_width_is_known_before_fitting(rate, length):
    """Training refuses a folder of too-short recordings by these widths, before the
    decoders' fit: they must be the widths that encoding gives."""
    from styletx.plugins.audio import MelEncoder, StftEncoder

    rng = np.random.default_rng(length)
    sample = AudioSample(rng.uniform(-0.5, 0.5, length).astype(np.float32), rate)
    for encoder in (MelEncoder(decoder_epochs=0), StftEncoder(rate=16000, hop=200)):
        assert encoder.width_before_fit(sample) == encoder.encode(sample).shape[-1]


def test_decoding_uses_the_decoders_own_statistics(voices):
    """A converted spectrogram is de-normalised with the *target* voice's statistics."""
    from styletx.plugins.audio import MelEncoder

    low, high = MelEncoder(), MelEncoder()
    low.fit([voices["low"]])
    high.fit([voices["high"]])
    x = low.encode(voices["low"])
    assert not np.allclose(low.mean, high.mean)
    via_high = high.log_spectrogram(high.decode(x).wave)
    assert np.abs(via_high.mean(axis=1) - high.mean).mean() < np.abs(
        via_high.mean(axis=1) - low.mean).mean()



def test_a_recording_is_encoded_at_one_speech_level(voices):
    """A match model fed its held-out sentence 30 dB quieter than its training recordings gave
    the source's pitch (100 Hz for the target's 208) and an MCD worse than the untouched input
    (4.89 dB against 4.33): every wave is now encoded at one speech level, and the output is
    brought back to the input's own loudness."""
    from styletx.audio.encoder import LEVEL_DB, levelled
    from styletx.plugins.audio import MelEncoder

    encoder = MelEncoder(decoder_epochs=0)
    encoder.fit([voices["low"]])
    loud = voices["low"]
    quiet = AudioSample(loud.wave * 10 ** (-40 / 20), RATE)
    assert torch.allclose(encoder.encode(loud), encoder.encode(quiet), atol=1e-3)
    back = encoder.decode(encoder.encode(quiet), like=quiet)
    assert abs(_db(back.wave) - _db(quiet.wave)) < 1.0

    # a run fitted before the level keeps encoding as it was trained
    older = MelEncoder(decoder_epochs=0)
    older.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "level_db"})
    assert older.level_db is None
    assert float((older.encode(loud) - older.encode(quiet)).abs().mean()) > 1.0

    # the level is the speech's: pauses and a click do not move it
    speech = levelled(loud.wave, RATE)
    assert abs(_db(speech) - LEVEL_DB) < 3.0
    paused = np.concatenate([loud.wave, np.zeros(3 * RATE, np.float32)])
    paused[len(loud.wave) + RATE] = 1.0  # a click in the pause
    assert np.allclose(levelled(paused, RATE)[: len(loud.wave)], speech, rtol=0.05, atol=1e-4)


def _db(wave: np.ndarray) -> float:
    return 20 * float(np.log10(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))))

def test_bad_encoder_settings():
    from styletx.contract.errors import UsageError
    from styletx.plugins.audio import MelEncoder

    with pytest.raises(UsageError, match="unknown setting 'bins'"):
        MelEncoder(bins=3)
    with pytest.raises(UsageError, match="n_fft >= hop"):
        MelEncoder(n_fft=128, hop=256)


def test_an_unreadable_recording_says_permission_denied(tmp_path, monkeypatch):
    """(chmod 000 cannot stop root, so the refusal is injected where the file is opened.)"""
    locked = tmp_path / "locked.wav"
    sf.write(locked, np.zeros(2205, np.float32) + 0.1, 22050)
    real_open = Path.open

    def refusing_open(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    with pytest.raises(BadInputError, match="cannot read file \\(permission denied\\)"):
        AudioDomain().load(locked)


def test_a_clip_shorter_than_two_loudness_frames_decodes(tmp_path):
    """600 samples (27 ms): fewer frames than the loudness smoothing's window."""
    from styletx.plugins.audio import MelEncoder

    clip = AudioSample(np.random.default_rng(0).standard_normal(600).astype(np.float32) * 0.1,
                       22050)
    encoder = MelEncoder()
    out = encoder.decode(encoder.encode(clip), like=clip)
    assert out.wave.shape == (600,) and np.isfinite(out.wave).all()


def test_a_narrower_band_than_the_rest_of_its_folder_is_warned_about():
    """An 8 kHz phone recording among 44.1 kHz ones holds nothing above 4 kHz, and the model
    learns the gap as part of the voice (a trial's previews were cut at 4 kHz)."""
    def at(rate):
        return AudioSample(np.zeros(rate, np.float32), rate)

    warnings = AudioDomain().compare_folders({"a": [at(8000), at(44100), at(48000)],
                                              "b": [at(16000), at(16000)]})
    assert warnings == ["1 of the 3 A_DIR files are sampled at 8000 Hz or less (nothing above "
                        "4000 Hz), the others at 22050 Hz or more: the model learns the missing "
                        "band as part of the voice; leave them out, or record all alike"]


def test_the_files_of_the_odd_band_are_named_the_fewer_kind():
    """One 44.1 kHz file among 31 at 16 kHz: the warning named no file and told the user to
    leave out the 31."""
    from styletx import FolderSamples

    def at(rate):
        return AudioSample(np.zeros(rate, np.float32), rate)

    rates = [16000] * 31 + [44100]
    folder = FolderSamples([at(r) for r in rates], [f"a/s{i:02d}.wav" for i in range(32)])
    assert AudioDomain().compare_folders({"a": folder}) == [
        "1 of the 32 A_DIR files (s31.wav) are sampled at 22050 Hz or more, the other 31 at "
        "16000 Hz or less (nothing above 8000 Hz): the model learns the band those lack as part "
        "of the voice; leave the 1 out, or record all alike"]
    phone = FolderSamples([at(8000)] * 7 + [at(22050)] * 9, [f"p{i}.wav" for i in range(16)])
    assert AudioDomain().compare_folders({"b": phone}) == [
        "7 of the 16 B_DIR files (p0.wav, p1.wav, p2.wav, p3.wav, p4.wav and 2 more) are "
        "sampled at 8000 Hz or less (nothing above 4000 Hz), the others at 22050 Hz or more: the "
        "model "
        "learns the missing band as part of the voice; leave them out, or record all alike"]


def spoken_with_pauses(parts: int = 4, speech: float = 2.6, pause: float = 0.6,
                       rate: int = 22050) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``parts`` utterances, each followed by ``pause`` seconds of silence; and the pauses."""
    from styletx.audio.synth import LOW, utterance

    waves, pauses, at = [], [], 0
    for i in range(parts):
        waves += [utterance(LOW, speech, rate, seed=i), np.zeros(int(pause * rate), np.float32)]
        at += len(waves[-2])
        pauses.append((at, at + len(waves[-1])))
        at += len(waves[-1])
    return np.concatenate(waves), pauses


def test_a_long_recording_is_cut_at_its_pauses_and_joined_whole():
    from styletx.audio import joined, pieces_at_pauses

    wave, pauses = spoken_with_pauses()
    pieces = pieces_at_pauses(AudioSample(wave, 22050), seconds=3.5, window=1.2)
    assert len(pieces) >= 4 and all(p.seconds <= 3.5 for p in pieces)
    assert np.array_equal(np.concatenate([p.wave for p in pieces]), wave)
    cuts = np.cumsum([len(p.wave) for p in pieces])[:-1]
    assert all(any(a <= cut < b for a, b in pauses) for cut in cuts)  # in a pause each
    assert len(pieces_at_pauses(AudioSample(wave, 22050), seconds=60)) == 1
    whole = joined(pieces)
    assert len(whole.wave) == len(wave) and whole.rate == 22050
    fade = int(0.0025 * 22050)
    away = np.ones(len(wave), bool)
    for cut in cuts:
        away[cut - fade:cut + fade] = False
        assert whole.wave[cut] == 0.0  # each side faded in and out (silent here anyway)
    assert np.array_equal(whole.wave[away], wave[away])
