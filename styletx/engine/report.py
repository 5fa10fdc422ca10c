"""The run report: ``RUN/report.html``, one page that opens offline and shows a run as a whole:
its settings, loss curves, the preview of each checkpoint (pictures; for voice, players for
every clip), the last `styletx evaluate` results and the timing.

Written by ``styletx report RUN``, and refreshed by training at checkpoints (at most once a
minute) and at the end. Pictures and sounds stay files beside the page (``samples/``,
``report/``): relative links, no network, nothing embedded twice.
"""

from __future__ import annotations

import datetime
import html
import inspect
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from styletx.contract.files import atomic_path, write_atomic
from styletx.engine.runs import LOG, SAMPLES, read_config

__all__ = ["write_report", "save_evaluation", "save_preview_titles", "clock", "REPORT",
           "ASSETS", "EVALUATION", "TITLES"]

log = logging.getLogger("styletx")

REPORT = "report.html"
ASSETS = "report"  # the page's own pictures (the loss curves)
EVALUATION = "evaluation-{direction}.json"  # written by `styletx evaluate`
TITLES = "titles.json"  # in samples/: each preview tile's title, rows by columns
PREVIEWS_SHOWN = 12  # the newest checkpoints' previews (and the first) are on the page
PREVIEW = re.compile(r"^step-(\d+)\.png$")
SMOOTHING = 0.9  # exponential moving average of the plotted losses (the raw values faintly)
MAX_POINTS = 2000  # records plotted at most: of a longer log, evenly spread ones

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 0 0 1.5em; }
audio { height: 28px; }
.preview img { min-width: 480px; image-rendering: pixelated; }
.muted { color: #777; }
"""


def write_report(run: Path) -> Path:
    """Write (or rewrite) ``run/report.html`` from what the run folder holds now."""
    config = read_config(run)
    records = read_log(run)
    curves = plot_losses(records, run / ASSETS / "losses.png") if records else None
    body = [
        _heading(run, config, records),
        _section("Losses", _curves_html(run, curves)),
        _section("Evaluation", _evaluation_html(run)),
        _section("Previews", _previews_html(run)),
        _section("Timing", _timing_table(config, records)),
        _section("Settings", _settings_table(config)),
    ]
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>styletx run {html.escape(run.name)}</title><style>{STYLE}</style>"
            f"</head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = run / REPORT
    write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def save_evaluation(run: Path, result: dict[str, Any]) -> Path:
    """Keep an evaluation's JSON in the run folder, for the report."""
    path = run / EVALUATION.format(direction=result["direction"])
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return path


def save_domain_preview(domain: Any, rows: list, encoders: list, stem: Path,
                        titles: list[list[str]] | None = None) -> None:
    """``domain.save_preview``, with a title per tile where the domain takes them (a domain
    plugin written before previews had titles does not)."""
    if titles is not None and "titles" in inspect.signature(domain.save_preview).parameters:
        domain.save_preview(rows, encoders, stem, titles=titles)
    else:
        domain.save_preview(rows, encoders, stem)


def save_preview_titles(run: Path, titles: list[list[str]]) -> None:
    """What each preview tile shows, for the report's labels of the voice clips."""
    path = run / SAMPLES / TITLES
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps({"titles": titles}) + "\n"))


def _clip_titles(run: Path) -> dict[str, str]:
    """"a1" -> "translated (B)": the names of the preview clips (row letter, column)."""
    try:
        titles = json.loads((run / SAMPLES / TITLES).read_text())["titles"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {f"{chr(ord('a') + r)}{c}": str(title)
            for r, row in enumerate(titles) for c, title in enumerate(row)}


def read_log(run: Path) -> list[dict[str, Any]]:
    """The training log's records; a torn or damaged line is left out. Parsed incrementally:
    training rewrites the report at checkpoints, and parsing a 400,000-line log took 8 s each
    time (a scale trial); only the lines added since the last call are parsed now. A log
    replaced (a resume drops the lines past its checkpoint, atomically) is parsed anew."""
    path = run / LOG
    try:
        with open(path, "rb") as f:
            status = os.fstat(f.fileno())
            inode, parsed, records = _LOG_CACHE.get(path, (None, 0, []))
            if inode != (status.st_dev, status.st_ino) or status.st_size < parsed:
                parsed, records = 0, []
            f.seek(parsed)
            data = f.read()
    except OSError:
        return []
    whole = data.rfind(b"\n") + 1  # a line still being written: parsed again next time
    records = records + _records(data[:whole])
    _LOG_CACHE[path] = ((status.st_dev, status.st_ino), parsed + whole, records)
    return records + _records(data[whole:])


_LOG_CACHE: dict[Path, tuple[Any, int, list[dict[str, Any]]]] = {}  # read_log's, by log file


def _records(data: bytes) -> list[dict[str, Any]]:
    records = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("losses"), dict):
            records.append(record)
    return records


# -- the loss curves --------------------------------------------------------------------------
def plot_losses(records: list[dict[str, Any]], path: Path) -> Path:
    """One small plot per loss against the step (raw faintly, smoothed on top), and the speed;
    of a long log, about MAX_POINTS records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _thinned(records)
    names = list(dict.fromkeys(k for r in records for k in r["losses"]))
    panels = [*names, "steps/s"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    # Fixed spacing: matplotlib's automatic layout would double the time of a refresh.
    figure, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.5 * rows), squeeze=False,
                                gridspec_kw=dict(left=0.07, right=0.98, bottom=0.3 / rows,
                                                 top=1 - 0.1 / rows, wspace=0.3, hspace=0.6))
    for ax, name in zip(axes.flat, panels):
        _plot_curve(ax, _curve(records, name), name)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)
    return path


def _curve(records: list[dict[str, Any]], name: str) -> list[tuple[int, float]]:
    """(step, value) of one loss ("steps/s": the speed)."""
    return [(r["step"], value) for r in records
            for value in [r.get("steps_per_s") if name == "steps/s" else r["losses"].get(name)]
            if isinstance(value, (int, float))]


def _thinned(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most about MAX_POINTS of ``records``, evenly spread, the last among them: a
    400,000-record log took 29 s to plot point by point, at every checkpoint of the run."""
    stride = -(-len(records) // MAX_POINTS)
    shown = records[::stride]
    return shown if shown[-1] is records[-1] else [*shown, records[-1]]


def _plot_curve(ax, points: list[tuple[int, float]], name: str) -> None:
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if not points:
        return
    steps, values = zip(*points)
    ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
    # Few points: less smoothing, so that a short run's curve does not lag behind its values.
    weight = max(0.0, min(SMOOTHING, 1 - 10 / len(values)))
    smoothed, average = [], values[0]
    for value in values:
        average = weight * average + (1 - weight) * value
        smoothed.append(average)
    ax.plot(steps, smoothed, color="tab:blue", linewidth=1.5)


# -- the page's parts ---------------------------------------------------------------------------
def _heading(run: Path, config: dict[str, Any], records: list[dict[str, Any]]) -> str:
    step, total = config.get("step", 0), config["train"].get("steps")
    state = "finished" if total and step >= total else "in progress or stopped"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f"<h1>styletx run <code>{html.escape(run.name)}</code></h1>"
            f"<p>{html.escape(config['translator'])} ({html.escape(str(config['preset']))} "
            f"preset) on {html.escape(config['domain'])}: step {step} of {total} "
            f"({state}). <span class=\"muted\">Page written {now}.</span></p>")


def _section(title: str, content: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{content}"


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> str:
    head = ("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table>{head}{body}</table>"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _settings_table(config: dict[str, Any]) -> str:
    data, train = config.get("data", {}), config.get("train", {})
    rows = [("model", config["translator"]), ("preset", config["preset"]),
            ("domain", config["domain"])]
    rows += [(f"data {side}", where) for side, where in data.items()]
    rows += [(f"training {k}", v) for k, v in train.items()]
    rows += [(f"encoder {side}", f"{e.get('name')} {json.dumps(e.get('params', {}))}")
             for side, e in config.get("encoders", {}).items()]
    model = [(k, v) for k, v in config.get("config", {}).items()]
    return (_table(rows, ("setting", "value")) + "<details><summary>the model's settings "
            f"({len(model)})</summary>" + _table(model, ("setting", "value")) + "</details>")


def _timing_table(config: dict[str, Any], records: list[dict[str, Any]]) -> str:
    timed = [r for r in records if isinstance(r.get("time"), (int, float))]
    if len(timed) < 2:
        return "<p class=\"muted\">Not enough of the training log yet.</p>"
    first, last = timed[0], timed[-1]
    seconds = last["time"] - first["time"]
    rates = sorted(r["steps_per_s"] for r in timed if r.get("steps_per_s"))
    rate = rates[len(rates) // 2] if rates else None  # the median
    started = datetime.datetime.fromtimestamp(first["time"]).astimezone()
    rows = [("first logged step", f"{first['step']} at {started:%Y-%m-%d %H:%M:%S}"),
            ("last logged step", last["step"]),
            ("time between them", clock(seconds)),
            ("steps/s (median of the logged periods)", rate if rate else "")]
    total = config["train"].get("steps")
    if total and rate and last["step"] < total:
        rows.append(("time left at that speed", clock((total - last["step"]) / rate)))
    return _table(rows)


def clock(seconds: float) -> str:
    """``1:02:03`` or ``2:03`` (also the training progress line's)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _curves_html(run: Path, curves: Path | None) -> str:
    if curves is None:
        return "<p class=\"muted\">No losses logged yet.</p>"
    return (f"<figure><img src=\"{_link(run, curves)}\" alt=\"loss curves\" id=\"losses\">"
            f"<figcaption class=\"muted\">Each loss against the step: logged values faint, "
            f"their moving average solid; the last panel is the training speed."
            f"</figcaption></figure>")


def _link(run: Path, path: Path) -> str:
    """A relative link from the page to ``path``, with a stamp so a browser does not show an
    older picture of the same name from its cache."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0
    return html.escape(f"{path.relative_to(run).as_posix()}?v={stamp}")


def _evaluation_html(run: Path) -> str:
    files = sorted(run.glob(EVALUATION.format(direction="*")))
    if not files:
        return ("<p class=\"muted\">Not evaluated: <code>styletx evaluate RUN A_TEST B_TEST"
                "</code> scores held-out pairs and adds its table here.</p>")
    return "\n".join(_one_evaluation(path) for path in files)


def _one_evaluation(path: Path) -> str:
    try:
        result = json.loads(path.read_text())
        means, metrics = result["mean"], result["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"<p>{html.escape(path.name)}: unreadable.</p>"
    rows = [(name, better, means["converted"].get(name), means["baseline"].get(name))
            for name, better in metrics.items()]
    pairs = len(result.get("pairs", []))
    folders = result.get("test_folders") or []  # older evaluations did not name them
    source = f" of {' and '.join(folders)}" if folders else ""
    return (f"<h3>{html.escape(str(result.get('direction')))}: {pairs} pair(s)"
            f"{html.escape(source)}</h3>"
            + _table(rows, ("metric", "better when", "converted (mean)",
                          "untouched input (mean)")))


def _previews_html(run: Path) -> str:
    previews = sorted(((int(m.group(1)), p) for p in (run / SAMPLES).glob("step-*.png")
                       if (m := PREVIEW.match(p.name))), reverse=True)
    if not previews:
        return "<p class=\"muted\">No previews yet (one is written at each checkpoint).</p>"
    shown = previews[:PREVIEWS_SHOWN] + ([previews[-1]] if len(previews) > PREVIEWS_SHOWN
                                         else [])
    note = (f"<p class=\"muted\">The newest {PREVIEWS_SHOWN} and the first of "
            f"{len(previews)}; all are in <code>{SAMPLES}/</code>.</p>"
            if len(previews) > len(shown) else "")
    titles = _clip_titles(run)
    return note + "\n".join(_one_preview(run, step, path, titles) for step, path in shown)


def _one_preview(run: Path, step: int, picture: Path, titles: dict[str, str]) -> str:
    clips = sorted(picture.parent.glob(f"{picture.stem}-*.wav"))
    players = "".join(
        f"<tr><td>{html.escape(titles.get(name := clip.stem.rsplit('-', 1)[1], ''))}</td>"
        f"<td>{html.escape(name)}</td><td><audio controls preload=\"none\" "
        f"src=\"{_link(run, clip)}\"></audio></td></tr>" for clip in clips)
    audio = (f"<table><tr><th>clip</th><th>row, column</th><th>listen</th></tr>{players}"
             f"</table>" if clips else "")
    return (f"<figure class=\"preview\"><figcaption>step {step}</figcaption>"
            f"<img src=\"{_link(run, picture)}\" alt=\"preview at step {step}\">{audio}"
            f"</figure>")
