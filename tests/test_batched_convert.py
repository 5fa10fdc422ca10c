"""Batched conversion: batches of equal-size inputs, chunks of long recordings and Griffin-Lim on a
batch give what one at a time gives; errors inside a batch stay per file; memory stays bounded."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from styletx.audio.dsp import griffinlim, stft_magnitude
from styletx.engine import apply
from styletx.engine.convert import load_run

RATE = 22050


def write(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def pixels(path):
    with Image.open(path) as img:
        return np.asarray(img, np.int16)


def record_batches(run):
    """Wrap the translator so that every network call's batch size is recorded."""
    sizes, translate = [], run.translator.translate

    def recording(x, direction):
        sizes.append(len(x))
        return translate(x, direction)

    run.translator.translate = recording
    return sizes


def assert_same_images(out_a, out_b, names):
    """Equal up to float rounding: oneDNN picks other kernels for other batch sizes (measured:
    ~1e-6 apart), so a value on a rounding boundary may land one 8-bit step away."""
    for name in names:
        a, b = pixels(out_a / name), pixels(out_b / name)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01, name


def test_batched_tensors_equal_one_at_a_time(trained_run):
    run = load_run(trained_run, device="cpu")
    x = torch.rand(6, 3, 24, 20) * 2 - 1
    batched = run.convert_tensor(x, batch_size=8)
    alone = torch.cat([run.convert_tensor(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_batched_files_equal_one_at_a_time(trained_run, tmp_path):
    """11 inputs of one size with 2 of another among them: batches of up to 8 of one shape,
    outputs as converted one at a time, reported in input order."""
    inputs = tmp_path / "in"
    for i in range(11):
        write(inputs / f"{i:02d}.png", (24, 20), seed=i)
    write(inputs / "04b.png", (13, 17), seed=20)
    write(inputs / "04c.jpg", (13, 17), seed=21)
    run = load_run(trained_run, device="cpu")
    sizes = record_batches(run)
    order = []
    batched = run.convert_files([inputs], tmp_path / "batched", batch_size=8,
                                on_file=lambda src, dst, problem: order.append(src.name))
    assert not batched.failed and len(batched.converted) == 13
    # 00-04 | 04b, 04c (other size) | 05-10: a batch ends where the shape changes
    assert sizes == [5, 2, 6]
    assert order == sorted(p.name for p in inputs.iterdir())
    single = run.convert_files([inputs], tmp_path / "single", batch_size=1)
    assert not single.failed and sizes[3:] == [1] * 13
    assert_same_images(tmp_path / "batched", tmp_path / "single", order)


def test_bad_file_inside_a_batch_is_reported_and_the_rest_converted(styletx, trained_run,
                                                                    tmp_path):
    inputs = tmp_path / "in"
    for i in range(6):
        write(inputs / f"{i:02d}.png", (16, 16), seed=i)
    (inputs / "02x.png").write_bytes(b"")  # between 02 and 03, inside the first batch
    (inputs / "03x.jpg").write_text("not an image")
    out = tmp_path / "out"
    result = styletx("convert", trained_run, inputs, "-o", out, "--batch-size", "4")
    assert result.exit_code == 1
    assert any("02x.png" in line and "empty file" in line for line in result.error_lines)
    assert any("03x.jpg" in line and "not an image" in line for line in result.error_lines)
    assert "converted 6 file(s)" in result.stdout and "2 failed" in result.stdout
    good = [f"{i:02d}.png" for i in range(6)]
    assert sorted(p.name for p in out.rglob("*")) == good  # no partial or temporary files
    alone = tmp_path / "alone"
    assert styletx("convert", trained_run, *(inputs / n for n in good), "-o", alone,
                   "--batch-size", "1").exit_code == 0
    assert_same_images(out, alone, good)


def test_unwritable_output_inside_a_batch(trained_run, tmp_path):
    inputs = tmp_path / "in"
    for i in range(4):
        write(inputs / f"{i:02d}.png", (16, 16), seed=i)
    out = tmp_path / "out"
    (out / "01.png").mkdir(parents=True)  # a folder where the output should go
    report = load_run(trained_run, device="cpu").convert_files([inputs], out, batch_size=4)
    assert [src.name for src, _ in report.failed] == ["01.png"]
    assert "cannot write" in report.failed[0][1]
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "02.png", "03.png"]
    assert (out / "01.png").is_dir() and not list((out / "01.png").iterdir())


def test_reading_ahead_is_bounded(trained_run, tmp_path, monkeypatch):
    """The reader thread is never more than one batch ahead: at most 2 * batch_size + 2 files
    are held in memory (a batch, the file that ends it, the queue and the one being put)."""
    inputs = tmp_path / "in"
    for i in range(20):
        write(inputs / f"{i:02d}.png", (16, 16), seed=i)
    run = load_run(trained_run, device="cpu")
    load, lock, held, most = run.domain.load, threading.Lock(), [0], [0]

    def counting_load(path):
        sample = load(path)
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        return sample

    def done(src, dst, problem):
        with lock:
            held[0] -= 1

    monkeypatch.setattr(run.domain, "load", counting_load)
    report = run.convert_files([inputs], tmp_path / "out", batch_size=3, on_file=done)
    assert len(report.converted) == 20
    assert 3 <= most[0] <= 2 * 3 + 2


def test_large_inputs_go_in_smaller_batches(trained_run, tmp_path):
    """On the CPU big batches run slower (see apply.BATCH_ELEMENTS): 128 x 128 images go two
    at a time, 256 x 256 ones alone, whatever --batch-size says."""
    inputs = tmp_path / "in"
    for i in range(5):
        write(inputs / f"{i:02d}.png", (128, 128), seed=i)
    for i in range(2):
        write(inputs / f"big{i}.png", (256, 256), seed=i)
    run = load_run(trained_run, device="cpu")
    sizes = record_batches(run)
    assert len(run.convert_files([inputs], tmp_path / "out", batch_size=8).converted) == 7
    assert sizes == [2, 2, 1, 1, 1]


def unlimited(monkeypatch):
    """Lift the per-call element limit, so that batches of large inputs can be tested."""
    monkeypatch.setattr(apply, "BATCH_ELEMENTS", {"cpu": 10**9, "default": 10**9})


def test_an_unexpected_error_stops_the_conversion_and_the_reader(trained_run, tmp_path,
                                                                monkeypatch):
    inputs = tmp_path / "in"
    for i in range(12):
        write(inputs / f"{i:02d}.png", (16, 16), seed=i)
    run = load_run(trained_run, device="cpu")
    load = run.domain.load

    def failing_load(path):
        if path.name == "05.png":
            raise RuntimeError("a bug, not a bad file")
        return load(path)

    monkeypatch.setattr(run.domain, "load", failing_load)
    with pytest.raises(RuntimeError, match="a bug"):
        run.convert_files([inputs], tmp_path / "out", batch_size=2)
    assert not [t for t in threading.enumerate() if t.name == "styletx-convert-reader"]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["00.png", "01.png", "02.png", "03.png"]  # whole batches before it


# -- voices: chunks of a long recording, and Griffin-Lim on a batch ----------------------------


@pytest.fixture(scope="module")
def voice_run(tmp_path_factory):
    """A tiny voice CycleGAN after one step: batching must not change what any model gives."""
    import styletx
    from styletx.audio.synth import write_voice_folders

    root = tmp_path_factory.mktemp("batched-voice")
    voices = write_voice_folders(root / "data", n_train=3, n_test=1, seconds=2.0)
    styletx.train(voices["a"], voices["b"], root / "run", model="cyclegan", preset="tiny",
                  settings=styletx.TrainSettings(steps=1, device="cpu", progress=False))
    return root / "run"


def test_chunks_of_a_long_recording_are_batched_with_the_same_result(voice_run, monkeypatch):
    from styletx.audio.synth import LOW, utterance
    from styletx.plugins.audio import AudioSample

    run = load_run(voice_run, device="cpu")
    chunk, overlap = run.domain.chunk_frames, run.domain.chunk_overlap
    sizes = record_batches(run)
    x = torch.zeros(2, 1, run.encoders["a"].bins, 3 * chunk)
    run.convert_tensor(x, batch_size=8)
    assert sizes == [1] * 8  # on the CPU a chunk of 80 x 256 is a batch by itself
    sizes.clear()
    unlimited(monkeypatch)
    wave = utterance(LOW, seconds=3.3 * chunk * 256 / RATE, seed=4)
    x = run.encoders["a"].encode(AudioSample(wave, RATE))[None]
    x = torch.cat([x, x.flip(-1)])  # two recordings of one length
    assert x.shape[-1] > 3 * chunk
    one_by_one = run.convert_tensor(x, batch_size=1)
    assert sizes == [1] * len(sizes) and len(sizes) == 2 * 4  # 4 chunks each
    batched = run.convert_tensor(x, batch_size=3)
    assert sizes[8:] == [3, 3, 2]
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    # the seams are blended as before: the chunks' own outputs, cross-faded
    first = run.convert_tensor(x[:1, ..., :chunk], batch_size=1)
    torch.testing.assert_close(batched[:1, ..., : chunk - overlap], first[..., : chunk - overlap],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_griffinlim_on_a_batch_equals_one_at_a_time(backend):
    rng = np.random.default_rng(0)
    waves = rng.standard_normal((3, 8000)).astype(np.float32) * np.hanning(8000).astype(np.float32)
    mag = stft_magnitude(waves, 512, 128)
    batch = griffinlim(mag, 512, 128, n_iter=8, length=8000, seed=[0, 0, 5], backend=backend)
    alone = [griffinlim(m, 512, 128, n_iter=8, length=8000, seed=s, backend=backend)
             for m, s in zip(mag, [0, 0, 5])]
    # torch's batched FFTs may sum in another order than one at a time on some CPUs (measured
    # on a Xeon: up to 4e-5 apart); another seed or item would differ everywhere, by ~100 %
    tolerance = 0 if backend == "numba" else 1e-2 * np.abs(batch).max()
    np.testing.assert_allclose(batch, np.stack(alone), rtol=0, atol=tolerance)
    tensor = griffinlim(torch.from_numpy(mag), 512, 128, n_iter=8, length=8000, seed=[0, 0, 5],
                        backend=backend)
    np.testing.assert_array_equal(tensor.numpy(), batch)
    with pytest.raises(ValueError, match="one seed per item"):
        griffinlim(mag, 512, 128, n_iter=1, seed=[0, 0])
    with pytest.raises(ValueError, match="one seed per item"):
        griffinlim(mag[0], 512, 128, n_iter=1, seed=[0])


def test_decode_batch_equals_decode(voice_run):
    from styletx.plugins.audio import AudioSample

    run = load_run(voice_run, device="cpu")
    encoder = run.encoders["b"]
    y = torch.randn(3, 1, encoder.bins, 40)
    likes = [AudioSample(np.zeros(39 * 256 + 10, np.float32), RATE, "FLAC"),
             AudioSample(np.zeros(39 * 256 + 200, np.float32), RATE, "WAV"),  # another length
             None]
    batch = encoder.decode_batch(y, likes)
    for tensor, like, got in zip(y, likes, batch):
        want = encoder.decode(tensor, like=like)
        assert (got.rate, got.format) == (want.rate, want.format)
        np.testing.assert_array_equal(got.wave, want.wave)
    assert [len(s.wave) for s in batch] == [39 * 256 + 10, 39 * 256 + 200, 39 * 256]


def test_equal_length_recordings_convert_as_one_at_a_time(voice_run, tmp_path, monkeypatch):
    from styletx.audio.synth import HIGH, LOW, utterance

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, voice in enumerate([LOW, HIGH, LOW]):  # three of one length, batched together
        sf.write(inputs / f"take{i}.wav", utterance(voice, seconds=3.5, seed=i), RATE)
    sf.write(inputs / "take3.wav", utterance(LOW, seconds=1.0, seed=3), RATE)
    run = load_run(voice_run, device="cpu")
    sizes = record_batches(run)
    unlimited(monkeypatch)  # as on a GPU
    batched = run.convert_files([inputs], tmp_path / "batched", batch_size=8)
    assert not batched.failed and len(batched.converted) == 4
    assert sizes[0] == 3 * 2  # three recordings of 2 chunks each, in one network call
    single = run.convert_files([inputs], tmp_path / "single", batch_size=1)
    assert not single.failed
    for i in range(4):
        a, rate_a = sf.read(tmp_path / "batched" / f"take{i}.wav", dtype="int16")
        b, rate_b = sf.read(tmp_path / "single" / f"take{i}.wav", dtype="int16")
        assert rate_a == rate_b == RATE and a.shape == b.shape
        # 16-bit samples: the batched convolutions' float rounding (~1e-6), grown by the
        # Griffin-Lim iterations (measured: at most 7 after 32; after the mel encoder's 64
        # since 0.2, 57 with two threads, within 32 with one)
        assert np.abs(a.astype(np.int32) - b).max() <= 128, i


def _conv_output_dtypes(run) -> list[torch.dtype]:
    """Record the dtype each convolution of the generators computes in."""
    dtypes: list[torch.dtype] = []
    for net in run.translator.networks().values():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                module.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    return dtypes


@pytest.mark.parametrize("fixture", ["trained_run", "voice_run"])
def test_bf16_precision_runs_the_networks_in_bf16_close_to_fp32(fixture, request):
    run_path = request.getfixturevalue(fixture)
    full, half = (load_run(run_path, device="cpu", precision=p) for p in ("fp32", "bf16"))
    dtypes = _conv_output_dtypes(half)
    if fixture == "voice_run":
        x = torch.randn(2, 1, full.encoders["a"].bins, 300)
    else:
        x = torch.rand(2, 3, 40, 36) * 2 - 1
    y_full, y_half = full.convert_tensor(x), half.convert_tensor(x)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert y_half.dtype == torch.float32 and y_half.shape == y_full.shape
    assert not torch.equal(y_full, y_half)
    # bf16 keeps 8 bits of mantissa: close, not equal
    assert (y_full - y_half).abs().mean() < 0.02 * y_full.abs().mean() + 1e-3


def test_unknown_precision_is_a_usage_error(styletx, trained_run, tmp_path):
    from styletx.contract.errors import UsageError

    with pytest.raises(UsageError, match="--precision fp16: use one of fp32, bf16"):
        load_run(trained_run, device="cpu", precision="fp16")
    result = styletx("convert", trained_run, tmp_path, "-o", tmp_path / "out", "--precision",
                     "fp16")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
