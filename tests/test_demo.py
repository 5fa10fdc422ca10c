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
