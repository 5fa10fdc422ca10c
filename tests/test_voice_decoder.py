"""The mel encoder's learned decoder (styletx.audio.decoder): better than the pseudo-inverse
on a real-sounding voice, saved and loaded with the encoder, and absent from old runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import styletx
from styletx.audio.dsp import stft_magnitude

DEMO = Path(styletx.__file__).parent / "audio" / "demo_voices"


@pytest.fixture(scope="module")
def voice():
    """The bundled high voice: a few recordings to fit on, one held out."""
    from styletx.plugins.audio import AudioDomain

    domain = AudioDomain()
    files = sorted((DEMO / "b").glob("*.flac"))[:6]
    return ([domain.load(f) for f in files], domain.load(sorted((DEMO / "test_b").glob("*"))[0]))


@pytest.fixture(scope="module")
def fitted(voice):
    from styletx.plugins.audio import MelEncoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = MelEncoder()  # 40 epochs of 6 recordings: ~130 steps, a few seconds
        encoder.fit(voice[0])
    finally:
        torch.set_num_threads(threads)  # the tests after this module keep their threads
    return encoder


def log_spectral_distance(encoder, sample) -> float:
    """dB RMS between the true STFT magnitude and the decoder's (before Griffin-Lim)."""
    p = encoder.params
    truth = stft_magnitude(encoder.resample(sample), p["n_fft"], p["hop"])
    decoded = encoder.linear_magnitude(encoder.log_spectrogram(encoder.resample(sample)))
    floor = 1e-4 * truth.max()
    difference = 20 * np.log10(np.maximum(decoded, floor) / np.maximum(truth, floor))
    return float(np.sqrt(np.mean(difference ** 2)))


def test_the_learned_decoder_beats_the_pseudo_inverse(fitted, voice):
    from styletx.plugins.audio import MelEncoder

    pseudo_inverse = MelEncoder(**fitted.params)
    pseudo_inverse.load_state_dict({k: v for k, v in fitted.state_dict().items()
                                    if not k.startswith("decoder.")})
    assert pseudo_inverse.decoder is None and fitted.decoder is not None
    held_out = voice[1]
    learned, before = (log_spectral_distance(e, held_out) for e in (fitted, pseudo_inverse))
    assert learned < before - 0.5, (learned, before)  # dB (measured 6.96 against 7.85)


def test_the_decoder_round_trips_through_state_dict(fitted, voice):
    from styletx.plugins.audio import MelEncoder

    again = MelEncoder(**fitted.params)
    again.load_state_dict({k: v.clone() for k, v in fitted.state_dict().items()})
    x = fitted.encode(voice[1])
    assert np.array_equal(again.decode(x).wave, fitted.decode(x).wave)


def test_a_state_without_the_decoder_decodes_as_before(fitted, voice):
    """A run saved before the learned decoder (mean and std only) loads and decodes by the
    pseudo-inverse, exactly as an encoder without a decoder does."""
    from styletx.plugins.audio import MelEncoder

    old_params = {k: v for k, v in fitted.params.items() if k != "decoder_epochs"}
    old_params["gl_iters"] = 32  # what old runs saved
    old = MelEncoder(**old_params)
    old.load_state_dict({"mean": torch.from_numpy(fitted.mean),
                         "std": torch.from_numpy(fitted.std)})
    plain = MelEncoder(**old_params, decoder_epochs=0)
    plain.mean, plain.std = fitted.mean, fitted.std
    x = fitted.encode(voice[1])
    assert old.decoder is None
    assert np.array_equal(old.decode(x).wave, plain.decode(x).wave)


def test_the_fit_is_deterministic(voice):
    from styletx.plugins.audio import MelEncoder

    first, second = MelEncoder(decoder_epochs=1), MelEncoder(decoder_epochs=1)
    for encoder in (first, second):
        encoder.fit(voice[0][:2])
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_training_steps_follow_the_audio_up_to_a_cap():
    from styletx.audio.decoder import MAX_STEPS, training_steps

    assert training_steps(10, 40) == 1
    assert training_steps(512, 40) == 40
    assert training_steps(10**8, 40) == MAX_STEPS


def voice_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "voice_real", Path(__file__).parents[1] / "benchmarks" / "voice_real.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_benchmark_splits_training_sentences_into_unpaired_halves():
    bench = voice_benchmark()
    folders = bench.split_sentences([f"s{i}" for i in range(10)], held_out=3)
    assert folders["test_a"] == folders["test_b"] == ["s7", "s8", "s9"]
    assert not set(folders["a"]) & set(folders["b"])
    assert sorted(folders["a"] + folders["b"]) == [f"s{i}" for i in range(7)]
    with pytest.raises(ValueError, match="held-out"):
        bench.split_sentences(["x", "y"], held_out=2)


def test_more_speech_keeps_the_test_and_the_first_files_and_refuses_the_other_folder(tmp_path):
    bench = voice_benchmark()
    standard, more = (bench.split_sentences(bench.sentence_list(m), bench.HELD_OUT)
                      for m in (False, True))
    assert more["test_a"] == standard["test_a"] and more["test_b"] == standard["test_b"]
    for side in ("a", "b"):  # the same files first, then more of them
        assert more[side][: len(standard[side])] == standard[side]
        assert len(more[side]) == len(standard[side]) + len(bench.MORE_SENTENCES) // 2
    (tmp_path / "SENTENCES.json").write_text(json.dumps(standard))
    bench.render_data(tmp_path)  # rendered already: nothing to do
    with pytest.raises(SystemExit, match="rendered without --more-speech: pass another --data"):
        bench.render_data(tmp_path, more_speech=True)
