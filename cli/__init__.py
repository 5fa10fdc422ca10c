"""The ``styletx`` command line. It only parses options and reports; the work is in ``styletx``."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import click

from styletx import __version__
from styletx.contract.errors import (
    StyletxError,
    TrainingInterrupted,
    UsageError,
    interrupt_status,
    is_out_of_memory,
    one_line,
    out_of_memory_problem,
    raise_terminated,
)
from styletx.demo import DEMO_MINUTES, DEMO_STEPS, VOICE_DEMO_MINUTES

log = logging.getLogger("styletx")
# torch.compile's modes, as styletx.engine.training.loop's (not imported: --help starts fast)
COMPILE_MODES = ["auto", "default", "reduce-overhead", "max-autotune",
                 "max-autotune-no-cudagraphs"]


class _Handler(logging.Handler):
    """Log lines on stderr, written through tqdm so they never tear a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        prefix = "Warning: " if record.levelno >= logging.WARNING else ""
        tqdm.write(prefix + record.getMessage(), file=sys.stderr)


def _setup_logging(quiet: bool) -> None:
    if not any(isinstance(h, _Handler) for h in log.handlers):
        log.addHandler(_Handler())
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    if _rank() > 0:  # torchrun's other processes: rank 0 reports for all (errors excepted)
        log.setLevel(logging.ERROR)
    log.propagate = False


FILE_SYSTEM_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def reports_errors(command):
    """Turn StyletxError into ``Error: <one line>`` and its exit code; never a traceback. So are
    running out of memory, a file system refusing a write, where no command explained them
    more closely, and an exception raised in a third-party plugin's code (naming the plugin);
    any other exception is a bug of styletx and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with _sigterm_as_interrupt():
            try:
                return command(*args, **kwargs)
            except (StyletxError, TrainingInterrupted) as err:  # the latter: saved, resumable
                _exit_with(err)
            except KeyboardInterrupt as stop:
                status = interrupt_status(stop)
                if _rank() == 0:  # every training process of --nproc meets it alike
                    click.echo("Error: " + ("terminated (SIGTERM)" if status == 143
                                            else "interrupted"), err=True)
                sys.exit(status)
            except Exception as exc:
                explained = _explained(exc)
                if explained is None:
                    raise
                _exit_with(explained)

    return wrapper


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops a command as Ctrl-C does (``Terminated``) rather than at once, which left
    temporary files behind and said nothing; a SIGTERM a parent set to ignore stays so. Not in
    the processes of a distributed run: one waiting in C++ for its peers (the rendezvous) would
    only print torch's retry warnings; their training loop takes SIGTERM over all the same."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            or "WORLD_SIZE" in os.environ):
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _explained(exc: Exception) -> StyletxError | None:
    """The one line for an exception that is not styletx's bug, or None."""
    if isinstance(exc, OSError) and exc.errno in FILE_SYSTEM_REFUSALS:
        return StyletxError(f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror)
    if is_out_of_memory(exc):
        return StyletxError(out_of_memory_problem(exc, ""))
    loaded = sys.modules.get("styletx.contract.registry")  # (not imported here for nothing)
    culprit = loaded.plugin_that_raised(exc.__traceback__) if loaded else None
    if culprit is None:
        return None
    plugin, where = culprit  # a third-party plugin's bug: one line naming it
    return StyletxError(f'plugin "{plugin.name}" ({plugin.version}) failed: {one_line(exc)} '
                        f"(at {where}); --debug shows the traceback for its author")


def _exit_with(err: StyletxError | TrainingInterrupted) -> None:
    if os.environ.get("STYLETX_DEBUG"):  # --debug: where it happened, before the one line
        traceback.print_exc()
    rank = _rank()
    message = one_line(err, limit=10_000, type_name=False)
    if rank == 0:  # one line, even when a library's message brought its own line breaks
        click.echo(f"Error: {message}", err=True)
    elif not isinstance(err, UsageError) and not _says_rank_0(err):
        click.echo(f"Error (process {rank}): {message}", err=True)
    sys.exit(err.exit_code)


def _says_rank_0(err: StyletxError | TrainingInterrupted) -> bool:
    """Errors every training process meets alike (an interrupt), which rank 0 reports."""
    return isinstance(err, TrainingInterrupted)


def _rank() -> int:
    """This process's rank among torchrun's training processes (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def registry():
    """The plugin registry; broken plugins are reported on stderr and skipped."""
    from styletx.contract.registry import get_registry

    reg = get_registry()
    for plugin in reg.plugins:
        if plugin.error:
            if os.environ.get("STYLETX_DEBUG") and plugin.error_traceback:
                click.echo(plugin.error_traceback.rstrip(), err=True)
            _echo_load_error(plugin.name, plugin.error)
    if any(plugin.error for plugin in reg.plugins):  # one that fails only now (an environment
        from styletx.engine.user_cache import forget_plugin_listing  # variable, a file it reads)

        forget_plugin_listing()  # must not stay listed as fine by `styletx plugins`
    return reg


def _echo_load_error(name: str, error: str) -> None:
    click.echo(f'Error loading plugin "{name}": {error}', err=True)


# Click >= 8.2 raises this for `styletx` alone (its message is the help); older Click prints it
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineErrors(click.Group):
    """Click's usage errors as one line ("Error: ..."), like every other error of styletx,
    instead of the usage text above it (``--help`` shows that). Exit code 2."""

    def main(self, *args, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except NO_ARGS_IS_HELP as exc:
            exc.show()  # `styletx` alone, or a group without its command: the help itself
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx else "styletx"
            click.echo(f"Error: {exc.format_message()} See '{path} --help'.", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="styletx")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress or log lines: only warnings, errors and the result (stdout).")
@click.option("--debug", is_flag=True,
              help="Print the traceback above an error's one line (also STYLETX_DEBUG=1).")
def cli(quiet: bool, debug: bool) -> None:
    """Learn a style mapping between two folders of files, and apply it."""
    from styletx.engine.threads import set_threads

    if debug:
        os.environ["STYLETX_DEBUG"] = "1"  # for torchrun's processes too
    _setup_logging(quiet)
    set_threads()  # OMP_NUM_THREADS if set, else one per physical core (per local process)


def _set_threads(ctx, param, value):
    if value is not None:
        from styletx.engine.threads import set_threads

        set_threads(value)
    return value


threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, expose_value=False,
    callback=_set_threads,
    help="Compute threads per process (default: OMP_NUM_THREADS, else one per physical core, "
         "shared by the processes of --nproc).")

vocoder_option = click.option(
    "--vocoder", type=click.Choice(["griffinlim", "world"]), default=None,
    help="Voice (mel and stft runs): turn spectrograms into sound by Griffin-Lim (default) or "
         "re-synthesise that with the WORLD vocoder from the input's pitch: a cleaner voice, a "
         "little further from the target's timbre (needs styletx[world]; docs/voice.md).")

conversion_settings_option = click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE",
    help="Change a setting that only affects how the model converts, for this command (the "
         "run folder is not changed), e.g. --set match_join=0 --set match_k=8 for a voice "
         "match model; `styletx plugins` lists each model's (repeatable).")


@cli.command()
@click.argument("a_dir", type=click.Path(path_type=Path))
@click.argument("b_dir", type=click.Path(path_type=Path), required=False)
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: runs/<A>2<B>). An existing run is resumed.")
@click.option("--model", "-m", default=None,
              help="Translator (default: match for audio, cyclegan otherwise).")
@click.option("--preset", "-p", default=None, help="Named settings, e.g. default or tiny.")
@click.option("--steps", type=int, default=None, help="Total training steps.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Train for about this long: a new run without --steps times its first "
                   "steps and plans as many as fit; any run saves and stops when time is up.")
@click.option("--batch-size", type=int, default=None, help="Examples per step.")
@click.option("--size", type=int, default=None,
              help="Training crop: pixels (square) for images, frames for audio (default: "
                   "the preset's; `styletx plugins` lists them).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a translator setting, e.g. --set ngf=32 (repeatable).")
@click.option("--domain", default=None, help="Force the domain (default: from the files).")
@click.option("--encoder", default=None, help="Force the encoder (default: the domain's choice).")
@click.option("--encoder-set", "encoder_settings", multiple=True, metavar="KEY=VALUE",
              help="Change an encoder setting, e.g. --encoder-set n_mels=80 (repeatable; "
                   "`styletx plugins` lists each encoder's).")
@click.option("--save-every", type=click.IntRange(min=1), default=None,
              help="Checkpoint every N steps (default: a tenth of the run, at most 500; and at "
                   "least every 5 minutes).")
@click.option("--preview-every", type=click.IntRange(min=1), default=None,
              help="Preview grid every N steps (default: as --save-every).")
@click.option("--log-every", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="bf16 autocast for forward passes on CUDA.")
@click.option("--aligned", is_flag=True,
              help="Paired models: each file of A_DIR holds A and B side by side (no B_DIR).")
@click.option("--balance", is_flag=True,
              help="Latent models (vaegan): draw rare kinds of example more often.")
@click.option("--balance-by", type=click.Choice(["elbo", "latent"]), default=None,
              help="How --balance finds rare examples: the model's negative ELBO (how badly "
                   "it explains each example; default) or histograms of the pooled latent "
                   "(DB-VAE).")
@click.option("--balance-every", type=int, default=None,
              help="Steps between re-estimates of the --balance weights (default 100).")
@click.option("--balance-smoothing", type=float, default=None,
              help="Added to the --balance densities; larger = closer to uniform "
                   "(default 0.001).")
@click.option("--balance-share", type=float, default=None,
              help="Share of the draws that follow the --balance weights, the rest uniform "
                   "(default 1).")
@click.option("--balance-min-effective", type=float, default=None,
              help="Flatten the --balance weights until at least this share of the examples "
                   "is effectively drawn (0: the weights as estimated; default 0.5).")
@click.option("--channels-last", is_flag=True,
              help="Channels-last memory format for the networks (faster on recent GPUs).")
@click.option("--compile", "compile_", is_flag=True,
              help="Run the generators through torch.compile (slow start, faster steps).")
@click.option("--compile-mode", type=click.Choice(COMPILE_MODES), default=None,
              help="torch.compile's mode (implies --compile). auto (default): "
                   "reduce-overhead (CUDA graphs) on CUDA, default on CPU.")
@click.option("--log", "log_to", type=click.Choice(["tensorboard"]), default=None,
              help="Also write the losses and previews for TensorBoard, in RUN/tensorboard/ "
                   "(pip install \"styletx[tensorboard]\").")
@click.option("--prefetch", type=click.IntRange(min=0), default=None,
              help="Batches drawn ahead in a background thread, pinned for the GPU "
                   "(default: 2 on CUDA, 0 on CPU).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Threads that read and prepare the training files (default: one per "
                   "CPU core, at most 8; 0 or 1: read them in one thread).")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Train on N processes of this machine (one per GPU; CPU: gloo) through "
                   "torchrun; --batch-size is then per process.")
@threads_option
@reports_errors
def train(a_dir, b_dir, out, model, preset, steps, minutes, batch_size, size, device, seed,
          settings, domain, encoder, encoder_settings, save_every, preview_every, log_every,
          amp, aligned, balance,
          balance_by, balance_every, balance_smoothing, balance_share, balance_min_effective,
          channels_last, compile_, compile_mode, log_to, prefetch, workers, nproc):
    """Train a model that turns files like A_DIR's into files like B_DIR's.

    Unpaired models (cyclegan, vaegan, and match for voices) learn from any two folders.
    Paired ones (--model pix2pix) pair
    a/x/001.png with b/x/001.jpg by relative path without extension, or read side-by-side
    pairs from A_DIR alone with --aligned.
    """
    from styletx.engine.model import parse_settings
    from styletx.engine.training import TrainSettings
    from styletx.engine.training import train as run_training

    if nproc is not None and nproc > 1:
        _relaunch_with_torchrun(nproc)
    default_name = f"{a_dir.name}2{b_dir.name}" if b_dir else a_dir.name
    out = out or Path("runs") / default_name
    tuning = {name: value for name, value in (("balance_by", balance_by),
                                              ("balance_every", balance_every),
                                              ("balance_smoothing", balance_smoothing),
                                              ("balance_share", balance_share),
                                              ("balance_min_effective", balance_min_effective))
              if value is not None}  # unset: TrainSettings' defaults
    result = run_training(
        a_dir, b_dir, out, model=model, preset=preset, overrides=parse_settings(settings),
        domain=domain, encoder=encoder, registry=registry(), aligned=aligned,
        encoder_settings=parse_settings(encoder_settings, "--encoder-set"),
        settings=TrainSettings(
            steps=steps, minutes=minutes, batch_size=batch_size, size=size, seed=seed,
            device=device, amp=amp,
            save_every=save_every, preview_every=preview_every, log_every=log_every,
            balance=balance, channels_last=channels_last, compile=compile_ or bool(compile_mode),
            compile_mode=compile_mode or "auto", log_to=log_to, prefetch=prefetch,
            workers=workers, **tuning,
        ),
    )
    if _rank() == 0:
        click.echo(f"run folder: {result.run} (step {result.step})")


def _relaunch_with_torchrun(nproc: int) -> None:
    """Run this same command line again as ``nproc`` processes on this machine, as torchrun
    would (``styletx.engine.distributed.launch``), without ``--nproc``; exit with their
    status."""
    from styletx.engine import threads
    from styletx.engine.distributed import launch, launched_by_torchrun

    if launched_by_torchrun():
        raise UsageError("--nproc: already running under torchrun; give one or the other")
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        args.append(arg)
    log.info("starting %d training processes, as torchrun --standalone --nproc-per-node=%d "
             "-m styletx.cli %s would", nproc, nproc, " ".join(args))
    # The children import styletx by module name: a styletx/ folder in the current directory (a
    # source checkout) must not shadow the installed package there (Python >= 3.11 honours it).
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    cores = threads.physical_cores()
    if threads.USER_THREADS is None:  # our default was for one process: share the cores
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    if nproc > cores and not _has_cuda():
        log.warning("--nproc %d on %d CPU core(s): the processes take turns on them, which "
                    "is no faster than --nproc %d", nproc, cores, cores)
    sys.exit(launch(args, nproc, env))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder; names mirror the inputs.")
@click.option("--direction", "-d", type=click.Choice(["a2b", "b2a"]), default="a2b",
              show_default=True, help="A to B, or B to A.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="At most this many inputs of equal size translated together (fewer for "
                   "large ones: on the CPU a 256 px image goes alone); the next files are "
                   "read meanwhile.")
@click.option("--format", "out_format", default=None,
              help="Output format by suffix, e.g. png (default: each input's own).")
@click.option("--device", default="auto", show_default=True)
@click.option("--keep-dropout", is_flag=True,
              help="Keep the generator's dropout on (pix2pix): a different output each run.")
@click.option("--normalize", type=click.Choice(["loudness", "peak"]), default=None,
              help="Voice: scale each output to its input's loudness (default; silence stays "
                   "silent) or its peak to -0.1 dBFS.")
@vocoder_option
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True,
              help="bf16: faster on GPUs and on CPUs with bf16 instructions, with slightly "
                   "different output.")
@click.option("--skip-existing", is_flag=True,
              help="Leave inputs whose output exists (every output written is whole), e.g. "
                   "to continue an interrupted conversion; default: replace them.")
@conversion_settings_option
@threads_option
@reports_errors
def convert(run, inputs, out_dir, direction, batch_size, out_format, device, keep_dropout,
            normalize, vocoder, precision, skip_existing, settings):
    """Convert files and folders (recursively) with the model in RUN."""
    from tqdm import tqdm

    from styletx.engine.convert import ConversionInterrupted, load_run
    from styletx.engine.model import parse_settings
    from styletx.engine.progress import Progress

    model = load_run(run, device=device, registry=registry(), keep_dropout=keep_dropout,
                     precision=precision, normalize=normalize, vocoder=vocoder,
                     settings=parse_settings(settings))
    with Progress("converted", "file(s)") as progress:

        def on_file(src, dst, problem):
            if problem:
                tqdm.write(f"Error: {src}: {problem}", file=sys.stderr)
            progress.update()

        try:
            report = model.convert_files(inputs, out_dir, direction, batch_size,
                                         on_file=on_file, out_format=out_format,
                                         on_start=progress.start,
                                         skip_existing=skip_existing)
        except ConversionInterrupted as stop:  # what is there is whole: say how much that is
            progress.close()
            click.echo(f"Error: interrupted after {progress.done} of {progress.total or '?'} "
                       f"file(s); those written into {out_dir} are complete, and the same "
                       f"command with --skip-existing converts the rest", err=True)
            sys.exit(stop.status)
    click.echo(f"converted {len(report.converted)} file(s) into {out_dir}"
               + (f"; left {len(report.skipped)} whose output was there" if report.skipped
                  else "")
               + (f"; {len(report.failed)} failed" if report.failed else ""))
    if report.failed:
        sys.exit(1)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("a_test", type=click.Path(path_type=Path))
@click.argument("b_test", type=click.Path(path_type=Path), required=False)
@click.option("--direction", "-d", type=click.Choice(["a2b", "b2a"]), default="a2b",
              show_default=True, help="A to B, or B to A.")
@click.option("--aligned", is_flag=True,
              help="Each file of A_TEST holds A and B side by side (no B_TEST).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--device", default="auto", show_default=True)
@vocoder_option
@conversion_settings_option
@threads_option
@reports_errors
def evaluate(run, a_test, b_test, direction, aligned, as_json, device, vocoder, settings):
    """Score RUN on held-out pairs: A_TEST holds side A's files, B_TEST their pairs on side B.
    a2b (the default) converts each file of A_TEST and compares it with its pair in B_TEST;
    b2a converts B_TEST's files and compares them with A_TEST's (the folders keep their order).
    The measures (images: PSNR, SSIM; voice: mel-cepstral distortion, log-F0 RMSE) are shown
    beside the same measures for the unconverted input. Pairs match by relative path without
    extension. The scores join the run's report, unless --vocoder or --set measured a variant.
    """
    from tqdm import tqdm

    from styletx.engine.convert import load_run
    from styletx.engine.evaluate import EvaluationInterrupted
    from styletx.engine.evaluate import evaluate as run_evaluation
    from styletx.engine.model import parse_settings
    from styletx.engine.progress import Progress

    model = load_run(run, device=device, registry=registry(), vocoder=vocoder,
                     settings=parse_settings(settings))

    with Progress("evaluated", "pair(s)") as progress:

        def on_pair(name, problem):
            if problem:
                tqdm.write(f"Error: {name}: {problem}", file=sys.stderr)
            progress.update()

        try:
            result = run_evaluation(model, a_test, b_test, direction, aligned,
                                    on_pair=on_pair, on_start=progress.start)
        except EvaluationInterrupted as stop:  # show what was scored; the report keeps its own
            progress.close()
            _print_interrupted(stop.partial, as_json, progress.total, stop.status)
    result.keep_in_report()  # not for a --vocoder or --set variant: it says so
    _print_report(result, as_json, _evaluation_table, "pair(s)")


def _print_interrupted(result, as_json: bool, total: int | None, status: int) -> None:
    """After Ctrl-C: the scores of the pairs done (not added to the report), then exit."""
    scored = len(result.scores)
    if scored:
        click.echo(json.dumps(result.to_json(), indent=2) if as_json
                   else _evaluation_table(result))
    click.echo(f"Error: interrupted after {scored + len(result.failed)} of {total or '?'} "
               f"pair(s); " + (f"the scores above are of those {scored} scored, not added to "
                               "the run's report" if scored else "none was scored"), err=True)
    sys.exit(status)


def _print_report(report, as_json: bool, table, what: str) -> None:
    """An evaluation or score report as JSON or a table; exit 1 if some inputs failed."""
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else table(report))
    if report.failed:
        click.echo(f"Error: {len(report.failed)} {what} could not be scored", err=True)
        sys.exit(1)


def _evaluation_table(result) -> str:
    """Per-pair metrics of the converted and the unconverted input, then the means."""
    names = list(result.metrics)
    width = max([len("mean")] + [len(s.name) for s in result.scores])
    head = " " * width + "".join(f"  {n:>22}" for n in names)
    sub = f"{'pair':<{width}}" + "  converted  unconverted" * len(names)
    source, target = result.direction[0].upper(), result.direction[2].upper()  # "a2b"
    aligned = result.scores and all(s.source == s.target for s in result.scores)
    what = (f"the {source} half of each file of A_TEST converted and compared with its "
            f"{target} half" if aligned else
            f"each file of {source}_TEST converted and compared with its pair in {target}_TEST")
    lines = [f"{result.direction}: {what}", head, sub]

    def row(label, converted, baseline):
        cells = "".join(f"  {converted[n]:>9.3f}  {baseline[n]:>11.3f}" for n in names)
        return f"{label:<{width}}{cells}"

    lines += [row(s.name, s.converted, s.baseline) for s in result.scores]
    means = result.means()
    lines += [row("mean", means["converted"], means["baseline"]), ""]
    for n in names:  # the mean change too: "better on 300 of 300" was +0.07 dB once
        change = means["converted"][n] - means["baseline"][n]
        lines.append(f"{n}: {result.metrics[n]} is better; the conversion is better on "
                     f"{result.improved(n)} of {len(result.scores)} pair(s), by {change:+.3f} "
                     f"on average")
    return "\n".join(lines)


SIDE = click.Choice(["a", "b"])


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--domain", "side", type=SIDE, default="a", show_default=True,
              help="Which side's decoder: a or b.")
@click.option("-n", "count", type=int, default=16, show_default=True,
              help="How many examples.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=None,
              help="Crop size as in train --size: pixels (square) or frames (default: the "
                   "training crop's).")
@click.option("--prior", is_flag=True,
              help="Draw from the prior N(0, I) instead of the Gaussian field fitted to the "
                   "training latents (the default; older runs have only the prior).")
@click.option("--device", default="auto", show_default=True)
@threads_option
@reports_errors
def sample(run, side, count, out_dir, seed, size, prior, device):
    """Decode drawn latents: new examples of one side (vaegan runs)."""
    from styletx.engine.convert import load_run
    from styletx.tools.latent import require_latent
    from styletx.tools.latent import sample as draw

    model = load_run(run, device=device, registry=registry())
    require_latent(model)
    written = draw(model, side, count, out_dir, seed=seed, size=size, prior=prior)
    click.echo(f"wrote {count} sample(s) of {side.upper()}: "
               + ", ".join(str(p) for p in written[:3]) + (" ..." if len(written) > 3 else ""))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--dims", default=None, metavar="D,D,...",
              help="Latent channels to walk, e.g. 0,3,7 (default: the 4 that change the "
                   "output most, largest first).")
@click.option("--steps", type=int, default=7, show_default=True, help="Tiles per channel.")
@click.option("--range", "k", type=float, default=3.0, show_default=True,
              help="Walk from -K to +K standard deviations.")
@click.option("--domain", "side", type=SIDE, default="a", show_default=True,
              help="The side INPUT belongs to (its encoder and decoder are used).")
@click.option("--full-size", is_flag=True,
              help="Tiles at INPUT's own size (default: at the training scale, as the model "
                   "learnt it; for images the shorter side at about 1.1x --size).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder.")
@click.option("--device", default="auto", show_default=True)
@threads_option
@reports_errors
def traverse(run, input_path, dims, steps, k, side, full_size, out_dir, device):
    """Walk one latent channel at a time through INPUT's latent (vaegan runs)."""
    from styletx.engine.convert import load_run
    from styletx.tools.latent import require_latent
    from styletx.tools.latent import traverse as walk

    channels = _parse_dims(dims)
    model = load_run(run, device=device, registry=registry())
    require_latent(model)
    if not input_path.is_file():
        raise UsageError(f"{input_path}: " + ("a folder; traverse walks one file's latent"
                                              if input_path.is_dir() else "no such file"))
    written = walk(model, input_path, channels, out_dir, steps=steps, k=k, side=side,
                   full_size=full_size)
    click.echo(f"wrote {len(written)} file(s) into {out_dir}")


def _parse_dims(text):
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--dims {text}: give channel numbers separated by commas, "
                         "e.g. 0,3,7") from None


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--domain", "side", type=SIDE, default="a", show_default=True,
              help="Score against this side's training data.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--device", default="auto", show_default=True)
@threads_option
@reports_errors
def score(run, inputs, side, as_json, device):
    """How unlike the training data each input is (vaegan runs): its outlier score (how far
    its detail statistics and the model's reconstruction error lie from the training
    examples': about 1 to 2 for a typical input, 2 more for each factor e of improbability),
    its percentile among the training examples'
    scores, and a flag above the threshold. Files and folders (recursively)."""
    from styletx.engine.convert import load_run
    from styletx.tools.latent import require_latent
    from styletx.tools.latent import score as run_scores

    model = load_run(run, device=device, registry=registry())
    require_latent(model)

    def on_file(path, result, problem):
        if problem:
            click.echo(f"Error: {path}: {problem}", err=True)

    report = run_scores(model, inputs, side, on_file=on_file)
    _print_report(report, as_json, _score_table, "file(s)")


def _score_table(report) -> str:
    width = max([len("file")] + [len(str(s.path)) for s in report.scores])
    lines = [f"{'file':<{width}}  {'score':>8}  {'percentile':>10}  flag"]
    for s in report.scores:
        flag = "unlike the training data" if s.flagged else ""
        lines.append(f"{str(s.path):<{width}}  {s.score:>8.4f}  {s.percentile:>10.1f}  {flag}"
                     .rstrip())
    flagged = sum(s.flagged for s in report.scores)
    lines.append(f"\n{flagged} of {len(report.scores)} file(s) above the threshold "
                 f"{report.threshold:.4f} (side {report.side.upper()})")
    return "\n".join(lines)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@reports_errors
def report(run):
    """Write RUN/report.html: settings, loss curves, the preview of each checkpoint (voice: with
    players), the last evaluation and the timing, as one page that opens offline.

    Training refreshes it at checkpoints (at most once a minute) and at the end, and `styletx
    evaluate` adds its table; this command writes it for any run folder, e.g. one trained by an
    older version.
    """
    from styletx.engine.report import write_report

    click.echo(f"wrote {write_report(run)}")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--direction", "-d", type=click.Choice(["a2b", "b2a"]), default="a2b",
              show_default=True, help="A to B, or B to A.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default=None,
              help="The file format (default: the one -o's suffix names, .onnx or .pt/.pth/"
                   ".ts; ONNX for any other).")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path),
              help="The file to write, e.g. model.onnx or model.pt.")
@click.option("--opset", type=click.IntRange(min=1), default=None,
              help="ONNX opset to write (default: the exporter's, 20 with torch 2.13; 18 is "
                   "the lowest it writes).")
@conversion_settings_option
@threads_option
@reports_errors
def export(run, direction, fmt, out, opset, settings):
    """Export RUN's generator for one direction as ONNX or TorchScript.

    The exported model takes what the source side's encoder makes of a file, a float32 tensor
    (N, C, H, W) (images: pixels in [-1, 1]; voices: the normalised log spectrogram), and
    returns the translated tensor, exactly as convert translates it (in one piece: convert cuts
    long recordings into chunks): any N, H and W (voices: any number of frames, the bins fixed
    by the run). Right after writing, the file is loaded and run on random inputs of two sizes
    and compared with PyTorch's translation: if the largest absolute difference exceeds 1e-3
    (styletx.engine.export.TOLERANCE) the file is removed and the exit code is 1. ONNX needs the
    onnx and onnxscript packages (pip install "styletx[export]"); without onnxruntime the ONNX file
    is written but not verified.
    """
    from styletx.engine.convert import load_run
    from styletx.engine.export import export as run_export
    from styletx.engine.export import format_for
    from styletx.engine.model import parse_settings

    fmt = format_for(out, fmt, opset)  # before the run is loaded: a usage error costs nothing
    model = load_run(run, device="cpu", registry=registry(), settings=parse_settings(settings))
    replacing = Path(out).exists()  # said, as nothing else would show it
    report = run_export(model, direction, fmt, out, opset=opset)
    size = f"{report.size_bytes / 1e6:.1f} MB" if report.size_bytes >= 1e5 else (
        f"{report.size_bytes / 1e3:.0f} kB")
    planned = model.config.train.steps  # a run exported part-way says so
    step = f"step {report.step}" + (f" of {planned}" if report.step < planned else "")
    click.echo(f"exported the {direction} generator of {run} ({report.translator}, {step}) to "
               f"{out} ({fmt}, {size}{'; it replaced the file there' if replacing else ''})")
    if report.verified:
        shapes = " and ".join(str(shape) for shape, _ in report.checks)
        click.echo(f"checked on random inputs {shapes}: largest difference from PyTorch "
                   f"{report.max_abs_diff:.2g} (tolerance {report.tolerance:g})")
    else:
        click.echo(f"Warning: {out} was written but NOT verified: onnxruntime is not installed "
                   f"(pip install onnxruntime)", err=True)


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@reports_errors
def plugins(ctx, as_json):
    """List the loaded plugins, their versions, what they register and each translator's
    presets (per domain: training crop, batch size, steps and what the preset is for).
    `styletx plugins new NAME --kind KIND` starts a plugin of your own."""
    if ctx.invoked_subcommand is not None:
        return
    from styletx.engine.user_cache import plugin_listing, step_times

    if os.environ.get("STYLETX_DEBUG"):  # --debug: load them now, tracebacks of the broken
        registry()
        listing = _plugin_listing()
    else:
        listing = plugin_listing(_plugin_listing)  # no torch import while nothing changed
        for p in listing:
            if p["error"]:
                _echo_load_error(p["name"], p["error"])
    _add_step_times(listing, step_times())
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        _exit_if_any_failed(listing)
        return
    for p in listing:
        origin = "built-in" if p["builtin"] else "entry point"
        click.echo(f"{p['name']} {p['version']} ({origin})")
        if p["error"]:
            click.echo(f"  error: {p['error']}")
        for kind, names in p["registers"].items():
            click.echo(f"  {kind}: {', '.join(names)}")
            for name, values in p.get("encoder_settings", {}).items() if kind == "encoders" \
                    else []:
                listed = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
                click.echo(f"    {name} --encoder-set: {listed}")
            for name in names if kind == "translators" else []:
                _echo_presets(p["presets"].get(name, {}))
                changeable = p.get("conversion_settings", {}).get(name)
                if changeable:
                    click.echo(f"    convert and export --set: {', '.join(changeable)}")
    _exit_if_any_failed(listing)


def _exit_if_any_failed(listing: list[dict]) -> None:
    """Exit 1 when a plugin failed to load (listed all the same): a check in CI or a
    plugin's own tests must not pass on a plugin that is not there."""
    if any(p["error"] for p in listing):
        sys.exit(1)


def _plugin_listing() -> list[dict]:
    """Every plugin, what it registers, each of its translators' presets and the settings
    a conversion may change (``conversion_settings``), as JSON values."""
    from styletx.contract.registry import get_registry

    reg = get_registry()

    def of_translators(plugin, value) -> dict:
        names = plugin.registers.get("translators", [])
        return {name: value(reg.translators[name]) for name in names if name in reg.translators}

    def encoder_settings(plugin) -> dict:  # the settings --encoder-set may change
        names = plugin.registers.get("encoders", [])
        return {name: dict(reg.encoders[name].defaults) for name in names
                if name in reg.encoders and reg.encoders[name].defaults}

    return [{**p.listing(),
             "presets": of_translators(p, lambda cls: _presets(cls, reg.domains)),
             "conversion_settings": of_translators(p, lambda cls: list(cls.conversion_settings)),
             "encoder_settings": encoder_settings(p)}
            for p in reg.plugins]


def _add_step_times(listing: list[dict], times: dict[str, float]) -> None:
    """Each preset's ``measured``: {device: seconds per step} of the last training run of it
    on this machine (styletx.engine.user_cache)."""
    from styletx.engine.user_cache import measured

    for p in listing:
        for translator, by_domain in p["presets"].items():
            for domain, presets in by_domain.items():
                for preset, values in presets.items():
                    values["measured"] = measured(times, translator, preset, domain)


@plugins.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(["translator", "encoder", "domain"]), required=True,
              help="What the plugin registers (a domain comes with its encoder).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="Folder to write the package styletx-NAME into.")
@reports_errors
def new_plugin(name, kind, out):
    """Write a working plugin package NAME of KIND, with its own tests, to start from."""
    from styletx.tools.scaffold import new_plugin as write_plugin

    folder = write_plugin(name, kind, out)
    click.echo(f"wrote {folder}\n  cd {folder} && pip install -e . && python -m pytest tests")


def _presets(cls, domains) -> dict[str, dict[str, dict]]:
    """{domain: {preset: {size, batch_size, steps, description}}} of a translator class."""
    from styletx.engine.training.settings import TRAIN_DEFAULTS

    return {domain: {name: {**TRAIN_DEFAULTS, **preset.train, "description": preset.description}
                     for name, preset in cls.presets_for(domain).items()}
            for domain in domains}


def _echo_presets(by_domain: dict[str, dict[str, dict]]) -> None:
    """A line per preset; one preset the same for several domains (a translator's image
    presets serve a plugin's domain too) names them together rather than repeating itself."""
    lines: dict[str, tuple[str, dict, dict[str, dict]]] = {}
    for domain, presets in by_domain.items():
        for name, p in presets.items():
            same = {k: v for k, v in p.items() if k != "measured"}
            key = json.dumps([name, same], sort_keys=True, default=str)
            lines.setdefault(key, (name, same, {}))[2][domain] = p.get("measured", {})
    for name, p, domains in lines.values():
        units = {SIZE_UNITS.get(domain) for domain in domains}
        size = (f"{p['size']} {units.pop()}" if len(units) == 1 and None not in units
                else f"size {p['size']}")
        measured = "; ".join(
            ", ".join(f"{seconds:.3g} s a step on {device}" for device, seconds in times.items())
            + (f" ({domain})" if len(domains) > 1 else "")
            for domain, times in domains.items() if times)
        click.echo(f"    --preset {name} ({', '.join(domains)}: {size}, "
                   f"batch {p['batch_size']}, {p['steps']} steps"
                   + (f"; measured here: {measured}" if measured else "")
                   + f"): {p['description']}")


SIZE_UNITS = {"image": "px", "audio": "frames"}  # what --size counts in the built-in domains


@cli.command()
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("styletx-demo"),
              show_default=True, help="Folder for the demo data, run and results.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Training time limit of each part (default: {DEMO_MINUTES:g} images, "
                   f"which stop sooner at {DEMO_STEPS} steps; {VOICE_DEMO_MINUTES:g} voice).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Train each part for this many steps instead of a time budget.")
@click.option("--part", type=click.Choice(["all", "images", "voice"]), default="all",
              show_default=True, help="Which demo to run.")
@click.option("--device", default="auto", show_default=True)
@threads_option
@reports_errors
def demo(out, minutes, steps, part, device):
    """Offline demos: synthetic images with a hidden colour transform, and two bundled voices."""
    from styletx.demo import run_demo, run_voice_demo

    registry()
    if part in ("all", "images"):
        result = run_demo(out, minutes or DEMO_MINUTES, steps, device=device)
        click.echo(
            f"\nconverted {result['files']} held-out images into {result['converted']}\n"
            f"previews during training: {result['samples']}\n"
            f"PSNR against the true winter images: {result['psnr_before']:.2f} dB untouched -> "
            f"{result['psnr_after']:.2f} dB converted\n"
            f"try: styletx convert {result['run']} YOUR_IMAGES -o OUT\n"
        )
    if part in ("all", "voice"):
        voice = run_voice_demo(out, minutes or VOICE_DEMO_MINUTES, steps, device=device)
        click.echo(
            f"\nconverted a held-out sentence of voice A into voice B: {voice['audio']}\n"
            f"spectrograms (input above, converted below): {voice['picture']}\n"
            f"mel-cepstral distortion to voice B saying the same words: "
            f"{voice['mcd_before']:.2f} dB untouched -> {voice['mcd_after']:.2f} dB converted\n"
            f"median F0: source {voice['f0_source']:.0f} Hz, converted "
            f"{voice['f0_converted']:.0f} Hz, target {voice['f0_target']:.0f} Hz\n"
            f"try: styletx convert {voice['run']} YOUR_RECORDING.wav -o OUT"
        )


class _ReaderMayLeave:
    """A text stream whose writes are dropped once the reader at the other end of the pipe has
    gone. With ``styletx train ... | tee log``, Ctrl-C stops tee too, and the next progress
    line would raise BrokenPipeError in the middle of the step that saves the checkpoint."""

    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone = True
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone = True

    def __getattr__(self, name):  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def _quiet(ctx, param, value):
    if value:
        _setup_logging(quiet=True)
    return value


# `styletx convert ... -q` as well as `styletx -q convert ...` (a trial's first try was refused)
for _command in cli.commands.values():
    _command.params.append(click.Option(
        ["-q", "--quiet"], is_flag=True, expose_value=False, callback=_quiet,
        help="As `styletx -q`: only warnings, errors and the result."))


def main() -> None:
    sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    status = cli(prog_name="styletx")  # ctx.exit(n) returns n here (not standalone mode)
    sys.exit(status if isinstance(status, int) else 0)
