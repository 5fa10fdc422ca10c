"""The run report (RUN/report.html): written by training at each checkpoint, by `styletx report`
and by `styletx evaluate`; its structure always, its rendering in headless Chromium when there
is one (scripts/report_screenshot.py)."""

from __future__ import annotations

import json
import logging
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styletx.engine.training import TrainSettings, train

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import report_screenshot  # noqa: E402


class Page(HTMLParser):
    """The parts of a report the tests look at: headings, pictures, players, table cells."""

    def __init__(self, path: Path):
        super().__init__()
        self.headings, self.images, self.audio, self.cells = [], [], [], []
        self._in = None
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"].split("?")[0])
        elif tag == "audio":
            self.audio.append(attrs["src"].split("?")[0])
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.headings.append(data.strip())
        elif self._in == "td" and data.strip():
            self.cells.append(data.strip())


def settings(steps: int, **kw) -> TrainSettings:
    return TrainSettings(**{**dict(steps=steps, size=16, batch_size=2, device="cpu",
                                   progress=False, log_every=1), **kw})


@pytest.fixture(scope="module")
def image_run(scenes, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=settings(6, save_every=3))
    return run


@pytest.fixture(scope="module")
def voice_folders(tmp_path_factory) -> dict[str, Path]:
    from styletx.audio.synth import write_voice_folders

    return write_voice_folders(tmp_path_factory.mktemp("voices"), n_train=2, n_test=1,
                               seconds=1.0)


def test_training_writes_the_report_with_curves_and_labelled_previews(image_run):
    page = Page(image_run / "report.html")
    assert page.headings == ["Losses", "Evaluation", "Previews", "Timing", "Settings"]
    # the loss curves and one preview per checkpoint (steps 3 and 6), newest first
    assert page.images == ["report/losses.png", "samples/step-000006.png",
                           "samples/step-000003.png"]
    for link in page.images:
        pixels = np.asarray(Image.open(image_run / link).convert("L"))
        assert pixels.std() > 10, link  # not a blank picture
    # the settings and the timing come from the run's config and log
    assert {"cyclegan", "tiny", "image"} <= set(page.cells)
    assert "last logged step" in page.cells and "6" in page.cells
    # each preview tile is titled; the titles are kept for the report
    titles = json.loads((image_run / "samples" / "titles.json").read_text())["titles"]
    assert titles == [["input (A)", "translated (B)", "cycled back (A)"],
                      ["input (B)", "translated (A)", "cycled back (B)"]]


def test_the_page_links_only_files_beside_it(image_run):
    """Opens offline: every link is relative and names a file of the run folder."""
    text = (image_run / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for link in Page(image_run / "report.html").images:
        assert (image_run / link).is_file()


def test_voice_report_has_labelled_spectrograms_and_players(voice_folders, tmp_path):
    run = tmp_path / "voice"
    train(voice_folders["a"], voice_folders["b"], run, preset="tiny", domain="audio",
          settings=settings(2, size=32, save_every=2))
    page = Page(run / "report.html")
    assert page.images == ["report/losses.png", "samples/step-000002.png"]
    # a player for each tile: 2 rows (from A, from B) of input, translated, cycled back
    assert len(page.audio) == 6 and all((run / clip).is_file() for clip in page.audio)
    assert "translated (B)" in page.cells  # the clip named by its tile's title
    figure = np.asarray(Image.open(run / "samples" / "step-000002.png").convert("RGB"))
    assert figure.shape[1] > 600  # axes, colour bars and titles around each spectrogram


def test_evaluate_adds_its_table(styletx, image_run, scenes):
    result = styletx("evaluate", image_run, scenes["test_a"], scenes["test_b"], "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    saved = json.loads((image_run / "evaluation-a2b.json").read_text())
    assert saved["direction"] == "a2b" and len(saved["pairs"]) == 3
    folders = [str(scenes[side].resolve()) for side in ("test_a", "test_b")]
    assert saved["test_folders"] == folders  # which test set the table is of
    page = Page(image_run / "report.html")
    assert "psnr_db" in page.cells and "ssim" in page.cells
    assert f"a2b: 3 pair(s) of {folders[0]} and {folders[1]}" in (
        image_run / "report.html").read_text()


def test_an_evaluation_from_python_joins_the_report_when_asked(image_run, scenes):
    """``styletx evaluate`` keeps its table in the report; a Python caller's evaluation did
    not, and the way to it was internal."""
    import styletx as api

    (image_run / "evaluation-b2a.json").unlink(missing_ok=True)
    scores = api.evaluate(image_run, scenes["test_b"], scenes["test_a"], direction="b2a")
    assert not (image_run / "evaluation-b2a.json").exists()  # only when asked
    assert repr(scores).startswith(f"<Evaluation of {str(image_run)!r} b2a: 3 pair(s); "
                                   "means: psnr_db ")  # not a screenful of dataclass fields
    assert scores.keep_in_report()
    saved = json.loads((image_run / "evaluation-b2a.json").read_text())
    assert saved["direction"] == "b2a" and len(saved["pairs"]) == 3
    assert "b2a: 3 pair(s) of" in (image_run / "report.html").read_text()
    (image_run / "evaluation-b2a.json").unlink()
    variant = api.load_run(image_run, device="cpu", precision="bf16")  # not the run's own
    assert variant.variant == ["--precision bf16"]
    scores = api.evaluate(variant, scenes["test_b"], scenes["test_a"], direction="b2a")
    assert not scores.keep_in_report() and not (image_run / "evaluation-b2a.json").exists()


def test_report_command(styletx, image_run, tmp_path):
    (image_run / "report.html").unlink()
    result = styletx("report", image_run)
    assert result.exit_code == 0 and (image_run / "report.html").is_file()
    missing = styletx("report", tmp_path / "nothing")
    assert missing.exit_code == 2
    assert missing.error_lines == [f"Error: {tmp_path / 'nothing'}: no such run folder"]


def test_a_damaged_log_line_is_left_out(image_run, tmp_path):
    from styletx.engine.report import write_report

    log = image_run / "log.jsonl"
    kept = log.read_text()
    try:
        log.write_text(kept + '{"step": 7, "losses": {"G_A": 0.1')  # torn by a power cut
        write_report(image_run)
        assert "report/losses.png" in Page(image_run / "report.html").images
    finally:
        log.write_text(kept)


def test_the_log_is_read_anew_only_where_it_changed(tmp_path):
    """Training rewrites the report at every checkpoint, and parsing a 400,000-line log took
    8 s each time (a scale trial): lines are parsed once now. What each call returns is still
    the whole log: appended lines, a torn last line (returned once whole), a replaced log."""
    from styletx.engine.report import read_log

    def line(step):
        return json.dumps({"step": step, "losses": {"G": step / 10}}) + "\n"

    log = tmp_path / "log.jsonl"
    log.write_text(line(1) + line(2))
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2]
    with log.open("a") as f:
        f.write(line(3) + line(4)[:9])  # the fourth still being written
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]
    with log.open("a") as f:
        f.write(line(4)[9:])
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3, 4]
    replaced = tmp_path / "new.jsonl"  # a resume from step 2 drops the lines after it
    replaced.write_text(line(1) + line(2) + line(3).replace('"G"', '"D"'))
    replaced.replace(log)
    assert [list(r["losses"]) for r in read_log(tmp_path)] == [["G"], ["G"], ["D"]]


def test_a_long_log_is_plotted_from_evenly_spread_records(tmp_path, monkeypatch):
    """A 400,000-record log took 29 s to plot point by point."""
    from styletx.engine import report

    records = [{"step": s, "losses": {"G": 1.0}, "steps_per_s": 2.0} for s in range(1, 10_001)]
    plotted = []
    monkeypatch.setattr(report, "_plot_curve", lambda ax, points, name: plotted.append(points))
    report.plot_losses(records, tmp_path / "losses.png")
    steps = [step for step, _ in plotted[0]]
    assert len(steps) <= report.MAX_POINTS + 1 and steps[0] == 1 and steps[-1] == 10_000
    assert len(set(b - a for a, b in zip(steps, steps[1:-1]))) == 1  # evenly spread


def test_a_failing_report_warns_once_and_training_goes_on(scenes, tmp_path, monkeypatch,
                                                          caplog):
    from styletx.engine.training import loop

    def broken(run):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(loop, "write_report", broken)
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="styletx"):
        result = train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
                       settings=settings(4, save_every=1))
    assert result.step == 4
    warnings = [r.getMessage() for r in caplog.records if "not refreshed" in r.getMessage()]
    assert warnings == [f"{tmp_path / 'run' / 'report.html'} not refreshed: "
                        f"RuntimeError: no fonts"]


@pytest.mark.skipif(report_screenshot.find_browser() is None,
                    reason="no Chromium (apt-get install chromium); "
                           "scripts/report_screenshot.py RUN does this check by hand")
def test_report_renders_in_chromium(image_run, tmp_path):
    seen = report_screenshot.check(image_run, tmp_path / "shot.png")
    assert seen["changed_fraction"] >= report_screenshot.MIN_CHANGED, seen
    assert seen["curve_pixels"] >= report_screenshot.MIN_CURVE_PIXELS, seen
    # and the check can fail: the same page with blank pictures
    blank = tmp_path / "blank"
    (blank / "report").mkdir(parents=True)
    (blank / "samples").mkdir()
    page = (image_run / "report.html").read_text()
    (blank / "report.html").write_text(page)
    for link in Page(image_run / "report.html").images:
        size = Image.open(image_run / link).size
        Image.new("RGB", size, "white").save(blank / link)
    seen = report_screenshot.check(blank, tmp_path / "blank.png")
    assert seen["changed_fraction"] < 0.01 and seen["curve_pixels"] == 0


def test_log_tensorboard_writes_scalars_and_previews(styletx, scenes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = styletx("train", scenes["a"], scenes["b"], "--out", run, "--preset", "tiny",
                     "--device", "cpu", "--steps", "4", "--size", "16", "--save-every", "2",
                     "--log-every", "1", "--log", "tensorboard")
    assert result.exit_code == 0, result.stderr
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {"loss/cycle_A", "loss/D_A", "lr/G", "speed/steps_per_s"} <= set(
        events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/cycle_A")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("preview")] == [2, 4]


def test_log_tensorboard_without_the_package_is_a_usage_error(styletx, scenes, tmp_path,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    result = styletx("train", scenes["a"], scenes["b"], "--out", tmp_path / "run",
                     "--preset", "tiny", "--device", "cpu", "--steps", "2", "--log",
                     "tensorboard")
    assert result.exit_code == 2
    assert result.error_lines == ['Error: --log tensorboard needs the tensorboard package: '
                                  'pip install "styletx[tensorboard]"']
    assert not (tmp_path / "run").exists()  # nothing written before the check
