"""The ``whisper-transcriber`` command: run, serve, worker, wyoming, models, engine, users and bench."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from app.settings import ROOT, load_settings
from workers import modelstore


@click.group()
def main() -> None:
    """Whisper Transcriber: a self-hosted speech-to-text appliance."""


# ------------------------------------------------------------------ processes


@main.command()
def serve() -> None:
    """Run the web app under Gunicorn (gthread, one process, many threads)."""
    settings = load_settings()
    from workers.lifecycle import follow_supervisor

    # Under `run`: Gunicorn gets SIGTERM (a graceful stop) when the supervisor dies; the request survives exec.
    follow_supervisor(signal.SIGTERM)
    Path(settings["DATA_DIR"]).mkdir(parents=True, exist_ok=True)  # Gunicorn writes its pid file there
    config = ROOT / "config" / "gunicorn.conf.py"
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(config), "app:create_app()"])


def _heartbeat(interval: float = 30.0) -> None:
    from app.supervisor import record_worker
    from workers import queue

    while True:
        try:
            queue.beat()
            record_worker()  # per-pid entry: the web process reports and signals workers by it
        except Exception:  # a busy database must not kill the heartbeat
            logging.getLogger(__name__).exception("heartbeat failed")
        time.sleep(interval)


def _leases(seconds: float, name: str) -> None:
    """Renew the running job's lease three times per lease; once per lease, give back jobs whose lease ran out.

    Each tick also reads whether an admin drained this worker (by name, from any box): then it finishes
    its job and takes no more until resumed.
    """
    from app.services import draining
    from workers import pipeline, queue

    tick, ticks, drained = max(0.5, seconds / 3), 0, False
    log = logging.getLogger(__name__)
    while True:
        time.sleep(tick)
        ticks += 1
        try:
            pipeline.renew_leases()
            if ticks % 3 == 0:
                pipeline.reconcile()  # a worker on another box died: its job must not wait for the minute task
            if draining.is_drained(name) != drained:
                drained = not drained
                log.warning("worker %s %s", name, "drained: no new jobs" if drained else "resumed")
                if drained:
                    queue.huey.storage.interrupt()  # the running job goes on; dequeue answers nothing
                else:
                    queue.huey.storage.resume()
        except Exception:  # a busy or unreachable database must not kill the thread; the next tick tries again
            log.exception("lease renewal failed")


@main.command()
def worker() -> None:
    """Run one Huey consumer: one process, one model, one job at a time."""
    from app.boot import boot
    from app.supervisor import prepare_worker, watch_concurrency
    from workers import lifecycle, pipeline, queue, tasks  # noqa: F401  (tasks registers the task functions)

    settings = boot(None, "worker")  # nice, data dir, logging, database, queue, breaker
    supervised = lifecycle.watch_supervisor()  # under `run`: exit (and stop ffmpeg) when the supervisor dies
    poll = float(settings["QUEUE_POLL_SECONDS"])
    prepare_worker(settings)  # standby if unwanted; ENGINE_THREADS from the saved concurrency
    pipeline.configure(settings)
    pipeline.reconcile()
    recycler = lifecycle.install_recycling(queue.huey, settings, supervised)  # memory or job limit reached
    threading.Thread(target=_heartbeat, daemon=True, name="heartbeat").start()
    lease = (float(settings["LEASE_SECONDS"]), settings["WORKER_NAME"])
    threading.Thread(target=_leases, args=lease, daemon=True, name="leases").start()
    consumer = queue.huey.create_consumer(
        workers=1, worker_type="thread", periodic=True, initial_delay=poll, max_delay=poll, backoff=1.0
    )
    watch_concurrency(consumer, settings)  # threads changed: SIGHUP self, Huey restarts after the job
    threading.Thread(target=_interrupt_on_stop, args=(consumer,), daemon=True, name="wake-on-stop").start()
    consumer.run()  # without a supervisor a recycling worker re-executes itself in here
    if recycler.reason:
        sys.exit(lifecycle.RECYCLE_EXIT_CODE)  # `run` starts a fresh worker at once


def _interrupt_on_stop(consumer: Any) -> None:
    # An idle worker thread waits on queue.wake for up to QUEUE_POLL_SECONDS; stopping must not wait for that.
    from workers import queue

    consumer.stop_flag.wait()
    queue.huey.storage.interrupt()


@main.command()
def run() -> None:
    """Run the web server and the saved number of workers; apply concurrency changes; stop cleanly."""
    from app.logging_setup import console_logging
    from app.supervisor import Supervisor

    settings = load_settings()
    console_logging(settings["LOG_LEVEL"])

    Path(settings["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    click.echo(f"Whisper Transcriber on http://{settings['HOST']}:{settings['PORT']}  (Ctrl-C stops)")
    sys.exit(Supervisor(settings).run())


@main.command()
def wyoming() -> None:
    """Serve speech-to-text to Home Assistant over the Wyoming protocol (WT_WYOMING_HOST:WT_WYOMING_PORT)."""
    # whisper.cpp's OpenMP threads spin while they wait for each other. When another process holds a core (a
    # worker's file job, anything), a spinning thread burns its slice waiting for one that is not running: a
    # 3 s command took 1.6-8 s on 2 threads under load instead of 0.3 s. Passive waiting costs a command
    # nothing measurable. libgomp reads this when it loads, so before any engine is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from app.boot import boot
    from workers import lifecycle, wyoming_server

    lifecycle.follow_supervisor(signal.SIGTERM)  # under `run`: stop (gracefully) when the supervisor dies
    settings = boot(None, "wyoming")  # data dir, logging, database (the counters); normal CPU priority
    sys.exit(wyoming_server.serve(settings))


# ---------------------------------------------------------------------- models


@main.group()
def models() -> None:
    """List, install, import and quantize whisper.cpp models."""


@models.command("list")
def models_list() -> None:
    """Show the installed models, marking those that also have CTranslate2 weights (for faster-whisper)."""
    folder = load_settings()["MODELS_DIR"]
    ct2 = set(modelstore.ct2_installed(folder))
    for name in modelstore.installed(folder):
        size = modelstore.model_path(folder, name).stat().st_size / 1e6
        click.echo(f"{name:24} {size:8.1f} MB" + ("  +ctranslate2" if name in ct2 else ""))


@models.command("install")
@click.argument("name")
@click.option("--url", help="Download an official ggml file from this URL instead of building offline.")
@click.option("--sha256", help="Expected SHA-256 of the download (required with --url).")
@click.option(
    "--quantize/--no-quantize",
    default=True,
    show_default=True,
    help="Also write the q8_0 copy that whisper.cpp runs faster (the calibration checks its accuracy).",
)
def models_install(name: str, url: str | None, sha256: str | None, quantize: bool) -> None:
    """Install NAME: tiny.en and base are built offline; others need --url and --sha256."""
    folder = load_settings()["MODELS_DIR"]
    Path(folder).mkdir(parents=True, exist_ok=True)
    if not modelstore.is_whisper_name(name):
        raise click.ClickException(f"{name!r} is not a Whisper model name")
    try:
        if url:
            if not sha256:
                raise click.ClickException("--sha256 is required with --url")
            path = modelstore.download(folder, name, url, sha256)
        else:
            path = modelstore.install_offline(folder, name)
    except (modelstore.ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name} installed at {path}")
    if quantize and not name.endswith("-q8_0") and not modelstore.model_path(folder, f"{name}-q8_0").exists():
        try:
            modelstore.quantize(folder, name, "q8_0")
            click.echo(f"{name}-q8_0 written beside it (whisper.cpp runs it faster; the calibration checks it)")
        except (modelstore.ModelError, ValueError) as exc:  # the model itself is installed and usable
            click.echo(f"warning: no q8_0 copy of {name}: {exc}", err=True)


@models.command("import")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Name to install it under, e.g. small.en")
def models_import(source: str, name: str) -> None:
    """Convert a CTranslate2 Whisper directory (e.g. a faster-whisper model) into a ggml model."""
    folder = load_settings()["MODELS_DIR"]
    try:
        path = modelstore.import_ct2(folder, source, name)
    except (modelstore.ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name} installed at {path}")


@models.command("quantize")
@click.argument("name")
@click.argument("qtype", default="q8_0")
def models_quantize(name: str, qtype: str) -> None:
    """Write a quantized copy (q8_0) of an installed model."""
    try:
        path = modelstore.quantize(load_settings()["MODELS_DIR"], name, qtype)
    except (modelstore.ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name}-{qtype} written to {path}")


# ---------------------------------------------------------------------- engine


@main.group()
def engine() -> None:
    """Inspect whisper.cpp, or compile it for this CPU (optional)."""


@engine.command("info")
def engine_info() -> None:
    """Show the installed pywhispercpp build and what whisper.cpp reports about this CPU."""
    import _pywhispercpp as pw

    from workers import native_build

    kind = "native build" if native_build.installed_is_native() else "PyPI wheel"
    click.echo(f"pywhispercpp {native_build.installed_version()} ({kind})")
    click.echo(f"whisper.cpp: {pw.whisper_print_system_info().strip()}")
    record = native_build.NativeBuild(load_settings()["DATA_DIR"], []).read_record()
    if record:
        click.echo(f"last native build ({record['created_at']}): {record['message']}")


def _engine_models(settings: dict[str, Any]) -> list[Path]:
    """The default model's f16 and q8_0 files, which the native build is verified on (q8_0 written if missing)."""
    name = str(settings["DEFAULT_MODEL"]).removesuffix("-q8_0")
    folder = settings["MODELS_DIR"]
    f16, q8 = modelstore.model_path(folder, name), modelstore.model_path(folder, f"{name}-q8_0")
    if not f16.is_file():
        raise click.ClickException(f"model {name} is not installed: whisper-transcriber models install {name}")
    if not q8.is_file():
        try:
            modelstore.quantize(folder, name, "q8_0")
        except (modelstore.ModelError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
    return [f16, q8]


def _forget_calibration(settings: dict[str, Any]) -> None:
    from workers import tuning

    path = tuning.tuning_path(settings)
    if path.exists():  # measured on the previous build: WT_ENGINE=auto would choose by stale figures
        path.unlink()
        click.echo("the engine calibration is redone at the next start (or now: whisper-transcriber tune)")


@engine.command("build")
@click.option("--revert", is_flag=True, help="Reinstall PyPI's wheel of the installed version.")
@click.option("--once", is_flag=True, help="Do nothing when this version was already built (or refused) on this box.")
@click.option("--runs", default=3, show_default=True, help="Interleaved rounds of the verification.")
def engine_build(revert: bool, once: bool, runs: int) -> None:
    """Compile pywhispercpp for this CPU and install it only when verified on the shipped clips and faster."""
    import platform

    from workers import native_build

    settings = load_settings()
    if revert:
        try:
            outcome = native_build.NativeBuild(settings["DATA_DIR"], [], echo=click.echo).revert()
        except native_build.BuildError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(outcome.message)
        _forget_calibration(settings)
        return
    builder = native_build.NativeBuild(settings["DATA_DIR"], _engine_models(settings), runs=runs, echo=click.echo)
    plan = native_build.plan_build(native_build.read_cpuinfo(), platform.machine())
    if once and builder.already_done(native_build.installed_version(), plan):
        click.echo(f"already done for this version: {(builder.read_record() or {}).get('message')}")
        return
    outcome = builder.run()
    if outcome.baseline and outcome.native:
        for model, clips in outcome.baseline.items():
            for clip, base in clips.items():
                new = outcome.native[model][clip]
                click.echo(
                    f"  {model:24} {clip:24} CPU {base['cpu']:6.2f} s -> {new['cpu']:6.2f} s  "
                    f"WER {base['wer']:.3f} -> {new['wer']:.3f}"
                )
    click.echo(outcome.message)
    if not outcome.installed:
        sys.exit(1)
    _forget_calibration(settings)


# ----------------------------------------------------------------------- users


@main.group()
def users() -> None:
    """Manage user accounts."""


@users.command("create")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--email", default=None)
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
def users_create(username: str, password: str, email: str | None, admin: bool) -> None:
    """Create a user."""
    from app import create_app
    from app.errors import AppError
    from app.models import db
    from app.services.users import create_user

    create_app()
    try:
        with db.connection_context():
            user = create_user(username, password, email, role="admin" if admin else "user")
    except AppError as exc:
        raise click.ClickException(exc.detail) from exc
    click.echo(f"created {user.role} {user.username} (id {user.id})")


@main.command()
@click.option("--model", default="tiny.en")
@click.option("--runs", default=3, help="Runs per clip; the median is reported.")
@click.option("--audio-dir", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--compare", is_flag=True, help="Side by side with faster-whisper: every engine, every workload.")
@click.option(
    "--workloads",
    default="jfk,osr,10min,batch8",
    show_default=True,
    help="With --compare: which of jfk, osr, 10min and batch8 to run.",
)
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="With --compare: save the figures.")
def bench(model: str, runs: int, audio_dir: str | None, compare: bool, workloads: str, json_out: str | None) -> None:
    """Time the bare engine and the running appliance on the shipped clips (or --compare with faster-whisper)."""
    if compare:
        from workers.compare import run_compare  # late: it loads the benchmark's extra machinery

        figures = run_compare(model=model, runs=runs, names=workloads.split(","), echo=click.echo)
        if json_out:
            Path(json_out).write_text(json.dumps(figures, indent=2))
        return
    from workers.bench import run_bench

    run_bench(model=model, runs=runs, audio_dir=Path(audio_dir) if audio_dir else None, echo=click.echo)


@main.command()
@click.option("--model", "models", multiple=True, help="Models to measure (repeatable); default: the default model.")
@click.option("--runs", default=2, show_default=True, help="Timed runs per clip and candidate.")
def tune(models: tuple[str, ...], runs: int) -> None:
    """Measure each engine and model file on this box and record the fastest accurate one (WT_ENGINE=auto)."""
    from workers import engine, lifecycle, tuning

    settings = load_settings()
    if lifecycle.follow_supervisor(signal.SIGTERM):  # started by `run`: background work, like a worker's
        lifecycle.lower_priority(int(settings["WORKER_NICE"]))
    engine.openmp_defaults()  # the engines are measured as a worker runs them
    names = list(models) or [settings["DEFAULT_MODEL"]]
    record = tuning.calibrate(settings, names, runs=runs, echo=click.echo)
    for name, entry in record["models"].items():
        for label, figures in entry["results"].items():
            click.echo(
                f"  {name:10} {label:40} short {figures['short']['seconds']:6.2f} s "
                f"(WER {figures['short']['wer']:.3f})  long {figures['long']['seconds']:6.2f} s "
                f"(WER {figures['long']['wer']:.3f})"
            )
        click.echo(f"{name}: short audio on {entry['short']}, long audio on {entry['long']}")
    if layout := record.get("layout"):
        figures = ", ".join(f"{label} {seconds:.2f} s" for label, seconds in layout["seconds"].items())
        click.echo(f"{layout['jobs']} queued jobs, workers x threads: {figures}; WT_WORKERS=0 runs {layout['workers']}")
    click.echo(f"saved to {tuning.tuning_path(settings)}")


if __name__ == "__main__":
    main()
