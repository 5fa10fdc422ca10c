"""`styletx demo` end to end, shortened: data generated offline, trained, converted, scored."""

from __future__ import annotations

import re


def test_demo_runs_offline_and_reports_where_results_are(styletx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = styletx("demo", "--part", "images", "--steps", "20", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "styletx-demo"
    assert len(list((out / "converted").glob("*.png"))) == 8
    assert (out / "run" / "model.safetensors").is_file()
    assert list((out / "run" / "samples").glob("*.png"))
    assert re.search(r"PSNR .*: [\d.]+ dB untouched -> [\d.]+ dB converted", result.stdout)
    assert f"styletx convert {out.relative_to(tmp_path) / 'run'}" in result.stdout
    again = styletx("demo", "--part", "images", "--steps", "20", "--device", "cpu")  # reused
    assert again.exit_code == 0, again.stderr


def test_the_demo_model_beats_the_untouched_scenes(tmp_path):
    """The demo's own settings learn its hidden transform: the preset's identity weight alone
    once held the generator at the identity on these scenes (15.5 dB -> 15.5 dB) unnoticed."""
    import torch

    from styletx.demo import run_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_demo(tmp_path / "demo", steps=300, device="cpu")
    finally:
        torch.set_num_threads(threads)
    # measured: 15.5 -> 28.6 dB after 400 steps; 300 steps on 24 of these scenes: 26.1
    assert result["psnr_after"] > result["psnr_before"] + 5, result
