"""The ``mi-bench`` command line.

    mi-bench run defense=bido attack=gmi            # train, attack, score, store, show
    mi-bench run dataset=mnist preset=quick seed=3 defense.lambda_y=1.0 --json
    mi-bench rescore RUN_ID judge.noise_amplitude=0.15   # score a stored run again (new record)
    mi-bench sweep defense=bido defense.lambda_y=0.5,1,2 seed=0,1
    mi-bench sweep defense=none,bido attack=gmi,kedmi --workers 2      # seeds 0,1,2
    mi-bench sweep defense=none,bido attack=gmi,kedmi --status
    mi-bench db rebuild
    mi-bench show-config defense=bido-coco
    mi-bench list
    mi-bench leaderboard --format markdown
    mi-bench report -o report.html                  # one self-contained HTML page
    mi-bench label RUN_ID --no-browser              # label reconstructions by eye (local page)

Every user mistake exits with status 2 and one ``error:`` line on stderr before work starts
(bad config, missing or corrupt data, a results path that is not a database or not writable,
a full disk). A run that fails during its work (training diverged, the disk filled up) exits
with status 1 and one ``error:`` line; a sweep whose cells failed exits with status 1 after
running all the others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import click

from mi_bench.config import RunConfig, compose, to_yaml
from mi_bench.errors import USER_ERRORS
from mi_bench.registry import LAUNCHERS, REGISTRIES
from mi_bench.runtime import Bars, console, setup_logging, stdout_console
from mi_bench.sweep import failure_line

log = logging.getLogger("mi_bench")


def _fail(msg: str, status: int = 2) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    sys.exit(status)


def _compose(overrides: tuple[str, ...]) -> RunConfig:
    try:
        return compose(list(overrides))
    except USER_ERRORS as exc:
        _fail(str(exc))
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def cli(log_level: str) -> None:
    """mi-bench: train defended classifiers, attack them, report accuracy vs leakage."""
    setup_logging(log_level)


def _run_one(cfg: RunConfig, quiet: bool) -> dict:
    from mi_bench.pipeline import run

    try:
        # stdout carries only the command's result (table or JSON): anything a library prints
        # while the pipeline runs goes to stderr with the logs and progress bars
        with contextlib.redirect_stdout(sys.stderr), Bars(not quiet, cfg.progress_interval_s) as bars:
            return run(cfg, bars)
    except USER_ERRORS as exc:
        _fail(str(exc))
    except ValueError as exc:  # bad values caught at run time (e.g. classes, checkpoint shape)
        _fail(str(exc))
    except (FloatingPointError, OSError) as exc:  # diverged; disk full while writing
        _fail(failure_line(exc), status=1)
    raise AssertionError("unreachable")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print the run record as JSON on stdout")
@click.option("--quiet", is_flag=True, help="no progress bars, and no progress lines when stderr is not a terminal")
def run(overrides: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Train (or load cached) target, evaluator and prior; attack; score; store the record.

    \b
    OVERRIDES are key=value: groups (dataset=, defense=, attack=, preset=) and dotted fields.
    \b
    Examples:
      mi-bench run defense=bido attack=gmi
      mi-bench run dataset=mnist preset=quick defense=mid defense.beta=0.2 seed=1
      mi-bench run attack=plgmi attack.iterations=100 threads=2 --json
    See 'mi-bench show-config' for every key.
    """
    cfg = _compose(overrides)
    rec = _run_one(cfg, quiet)
    if as_json:
        click.echo(json.dumps(rec, indent=2, default=str))
    else:
        from mi_bench.tables import health_lines, run_table

        stdout_console().print(run_table(rec))
        for line in health_lines(rec):  # one plain line per problem, never wrapped
            click.echo(line)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("items", nargs=-1)
@click.option("--db", default="results/mi_bench.sqlite", show_default=True,
              help="results database: where run ids are looked up and the new records are indexed")
@click.option("--all", "all_runs", is_flag=True, help="every run of --db not re-scored already")
@click.option("--json", "as_json", is_flag=True, help="print the new records as a JSON list on stdout")
@click.option("--quiet", is_flag=True, help="no progress bars, and no progress lines when stderr is not a terminal")
def rescore(items: tuple[str, ...], db: str, all_runs: bool, as_json: bool, quiet: bool) -> None:
    """Score stored runs again from their saved reconstructions, with today's judges and metrics.

    \b
    ITEMS are run ids (of --db), run folders (holding record.json), and key=value overrides of
    the scoring only: judges=, judge.*, eval.*, evaluator.*, eval_seed, health.* (plus threads, device,
    cache_dir, data_root, results_db, results_dir). The target, prior and inversion are not
    re-run. Each run gets a new record (new run id and folder beside the old one unless
    results_dir= says otherwise, rescored_from: the old id), indexed in --db; the leaderboard
    then counts the re-scored record instead of the old one. Judges are trained or loaded from
    the cache like in a run. Every input is checked before any work.
    \b
    Examples:
      mi-bench rescore 20261126-141935-d7e45a --db results/fidelity/fidelity.sqlite
      mi-bench rescore results/runs/20261126-141935-d7e45a judge.noise_amplitude=0.15
      mi-bench rescore --all --db results/mi_bench.sqlite judges=[eval,robust]
    """
    from mi_bench import rescore as rs

    runs = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    try:
        jobs, splits = rs.plan(rs.find_runs(runs, db, all_runs=all_runs), overrides, db=db)
    except USER_ERRORS as exc:
        _fail(str(exc))
    try:
        with contextlib.redirect_stdout(sys.stderr), Bars(not quiet, jobs[0].cfg.progress_interval_s) as bars:
            recs = rs.rescore_all(jobs, splits, bars)
    except USER_ERRORS as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    except (FloatingPointError, OSError) as exc:
        _fail(failure_line(exc), status=1)
    if as_json:
        click.echo(json.dumps(recs, indent=2, default=str))
        return
    from mi_bench.tables import health_lines, rescore_table

    out = stdout_console()
    for rec in recs:
        out.print(rescore_table(rec))
        for line in health_lines(rec):
            click.echo(line)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--launcher", type=click.Choice(LAUNCHERS.names()), default="local", show_default=True,
              help="local: this machine (with --workers N: the 'workers' launcher, N processes); "
                   "slurm: one job array through submitit (resources: slurm.*); others: registered "
                   "mi_bench.launchers plugins")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="local launcher: cells run at once, each in its own process")
@click.option("--dry-run", is_flag=True, help="list the cells, which have records, and the artifacts each would train")
@click.option("--status", "show_status", is_flag=True, help="show done / running / failed / pending cells")
@click.option("--retry-failed", is_flag=True, help="run again the cells that failed before")
@click.option("--force", is_flag=True, help="re-run cells that already have a record")
@click.option("--wait/--no-wait", default=False, help="slurm: wait for the jobs, then index their records")
@click.option("--quiet", is_flag=True, help="no progress bars, and no progress lines when stderr is not a terminal")
def sweep(overrides: tuple[str, ...], launcher: str, workers: int, dry_run: bool, show_status: bool,
          retry_failed: bool, force: bool, wait: bool, quiet: bool) -> None:
    """Run the cartesian product of comma-separated values (``defense.lambda_y=0.5,1,2``).

    \b
    Without seed=..., every cell runs with seeds 0, 1 and 2: a comparison against a matched
    baseline needs at least three seeds. seeds=N runs seeds 0..N-1 (not with seed=);
    results/bench/power.md says how many a 10- or 20-point change needs.
    A cell whose record exists (same config hash) is skipped, so an interrupted sweep resumes
    where it stopped; a failed cell is recorded (config and error), the others go on, and
    --retry-failed runs it again. Artifacts shared by cells (evaluator, GMI prior) are trained
    once, also by parallel workers or Slurm tasks.
    \b
    Examples:
      mi-bench sweep defense=none,bido attack=gmi,kedmi --dry-run
      mi-bench sweep defense=none,bido attack=gmi,kedmi --workers 2
      mi-bench sweep defense=mid defense.beta=0.01,0.1 --launcher slurm slurm.partition=gpu slurm.gpus=1 device=cuda
      mi-bench sweep defense=mid defense.beta=0.01,0.1 --status
    """
    from rich.console import Console

    from mi_bench import sweep as sw
    from mi_bench.tables import dry_run_table, sweep_status_table

    try:
        cells = sw.make_cells(overrides)  # validate everything before any work
        if show_status:
            table, line = sweep_status_table(*sw.status(cells))
        elif dry_run:
            table, line = dry_run_table(sw.dry_run(cells))
        else:
            chosen = "workers" if launcher == "local" and workers > 1 else launcher
            outcome = sw.run_sweep(cells, overrides, launcher=chosen, workers=workers, force=force,
                                   retry_failed=retry_failed, wait=wait, quiet=quiet)
    except USER_ERRORS as exc:
        _fail(str(exc))
    if show_status or dry_run:
        out = Console()
        out.print(table)
        out.print(line)
        return
    if outcome.failed:
        _fail(f"{len(outcome.failed)} of {len(outcome.todo)} cells failed (the others ran); 'mi-bench sweep "
              f"{' '.join(overrides)} --status' lists them and --retry-failed runs them again", status=1)


@cli.command("data", context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON on stdout")
@click.option("--no-timing", is_flag=True, help="counts only: do not time the networks' steps")
@click.option("--remeasure", is_flag=True, help="time the steps again (timings are kept in the cache for a week)")
def data(overrides: tuple[str, ...], as_json: bool, no_timing: bool, remeasure: bool) -> None:
    """Show the protocol a config would produce, before any training (mi_bench/dataplan.py).

    \b
    OVERRIDES as for 'mi-bench run'. Prints the private and public identities, the images per
    identity per split (min / median / max), the image size, the reconstructions the attack will
    make and an estimate of each stage's time from a few timed steps on this machine, and the
    warnings the data alone can give. Bad input: one error line, exit status 2, as 'run'.
    \b
    Examples:
      mi-bench data preset=quick dataset=digits attack=gmi
      mi-bench data dataset=folder dataset.face.path=~/faces preset=cpu attack.max_latents=200
    """
    from mi_bench.dataplan import plan, render

    cfg = _compose(overrides)
    stdout, shown = sys.stdout, []

    def protocol_first(head: dict) -> None:  # the protocol as soon as the data is loaded
        shown.append(len(head["warnings"]))
        click.echo(render(head, "protocol"), file=stdout)
        if not no_timing:
            click.echo("timing a few steps of each stage on this machine (kept in the cache for a week) ...",
                       file=sys.stderr)

    try:
        with contextlib.redirect_stdout(sys.stderr):
            p = plan(cfg, measure=not no_timing, remeasure=remeasure,
                     on_protocol=None if as_json else protocol_first)
    except USER_ERRORS as exc:
        _fail(str(exc))
    except ValueError as exc:  # bad values found while loading (too few images per identity, ...)
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(p, indent=2, default=str))
    else:
        rest = render(p, "estimate", shown_warnings=shown[0] if shown else 0)
        if rest:
            click.echo(rest)


@cli.command("show-config", context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
def show_config(overrides: tuple[str, ...]) -> None:
    """Print the resolved configuration."""
    click.echo(to_yaml(_compose(overrides)), nl=False)


@cli.command("list")
def list_cmd() -> None:
    """List registered attacks, defenses, datasets and models."""
    from mi_bench.config import group_options

    from mi_bench.tables import registry_table

    out = stdout_console()  # the listing is the command's output
    for kind, reg in REGISTRIES.items():
        out.print(registry_table(kind, reg))
        for n, why in reg.broken.items():
            out.print(f"[yellow]broken {kind} plugin '{n}' (skipped): {why}[/]")
    from mi_bench.registry import load_plugin_files

    for path, why in load_plugin_files().items():
        out.print(f"[yellow]broken plugin file {path} (MI_BENCH_PLUGINS, skipped): {why}[/]")
    out.print(f"presets: {', '.join(group_options('preset'))}")
    out.print(f"defense options (with aliases): {', '.join(group_options('defense'))}")


def _sources(f):
    """--db / --records: where the records come from (leaderboard and report)."""
    f = click.option("--records", type=click.Path(exists=True, path_type=Path), multiple=True,
                     help="read run records instead of a database: a .jsonl file (mi-bench db export; "
                          "gzipped as .jsonl.gz also) "
                          "or a folder of run folders holding record.json; repeat to merge several")(f)
    return click.option("--db", default="results/mi_bench.sqlite", show_default=True, help="results database")(f)


def _filters(f):
    """--dataset / --attack / --defense / --preset: comma-separated or repeated; any if absent."""
    for name, what in (("preset", "presets"), ("defense", "defenses, by name (every strength) or full label"),
                       ("attack", "attacks"), ("dataset", "datasets")):
        f = click.option(f"--{name}", f"only_{name}", multiple=True, metavar="NAME[,NAME]",
                         help=f"only these {what}")(f)
    return f


def _load(db: str, records: tuple[Path, ...]) -> list[dict]:
    """The records of --records (merged, each run once) or of --db."""
    from mi_bench.results import load_records

    if not records and not Path(db).is_file():
        _fail(f"no results database at {db}: run 'mi-bench run' first or pass --db PATH / --records PATH")
    try:
        if not records:
            return load_records(db)
        merged = {r["run_id"]: r for path in records for r in load_records(path)}
        return sorted(merged.values(), key=lambda r: (r["created_at"], r["run_id"]))
    except USER_ERRORS as exc:  # an unreadable database or records file
        _fail(str(exc))
    raise AssertionError("unreachable")


def _selection(kw: dict) -> dict[str, list[str]]:
    return {k.removeprefix("only_"): [v for item in kw[k] for v in item.split(",") if v]
            for k in ("only_dataset", "only_attack", "only_defense", "only_preset")}


@cli.command()
@_sources
@click.option("--format", "fmt", default="table",
              type=click.Choice(["table", "markdown", "csv", "json", "latex", "html"]))
@click.option("--wide", is_flag=True, help="table: every column and the seed lists, however wide")
@_filters
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="write to a file")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="also save a tradeoff plot (PNG)")
def leaderboard(db: str, records: tuple[Path, ...], fmt: str, wide: bool, output: Path | None,
                plot: Path | None, **filters: tuple[str, ...]) -> None:
    """Stored results grouped over seeds (mean with 95% interval), every judge, the human check
    where runs were labelled, and (markdown) each defense's effect against its published and
    matched baselines and each attack's margin over the calibration baselines.

    \b
    The table (the default, on a terminal) has one heading per dataset / protocol / attack /
    preset and starts with defense, target accuracy, attack accuracy and the judges' consensus;
    other columns follow as the width allows (--wide: all). Numbers are never cut.
    n/a = absent by design, failed = the computation failed; footnotes give the reason.
    \b
    Examples:
      mi-bench leaderboard --attack gmi --defense none,bido
      mi-bench leaderboard --records results/bench/attacks.records.jsonl --wide
      mi-bench leaderboard --format markdown -o board.md --plot tradeoff.png
    """
    from mi_bench.results import baseline_margins, defense_effects, leaderboard as board, render, select

    recs = _load(db, records)
    only = _selection(filters)
    try:
        rows = select(board(recs), **only)
    except USER_ERRORS as exc:  # an unreadable labels.json
        _fail(str(exc))
    if plot:
        from mi_bench.viz import tradeoff_plot
        tradeoff_plot(plot, rows, "accuracy vs leakage")
    if fmt == "table" and output is None:
        from rich.console import Console

        from mi_bench.results.terminal import board as term_board

        out = stdout_console()
        parts, need = term_board(rows, width=out.width, wide=wide)
        if need > out.width:  # never cut a number: print wider and let the terminal wrap
            out = Console(width=need, file=sys.stdout)
        for part in parts:
            out.print(part, highlight=False)
        return
    fmt = "markdown" if fmt == "table" else fmt
    md = fmt == "markdown"
    text = render(rows, fmt, margins=select(baseline_margins(recs), **only) if md else None,
                  effects=select(defense_effects(recs), **only) if md else None)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        log.info("wrote %s", output)
    else:
        click.echo(text, nl=False)


@cli.command()
@_sources
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the HTML file to write")
@_filters
@click.option("--data-root", default=None,
              help="dataset root for the real images (default: each run's data_root / $MI_BENCH_DATA)")
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path),
              help="folder of run folders, searched by run id when a record's run_dir is not found")
@click.option("--gallery-classes", default=5, show_default=True, type=click.IntRange(1, 100),
              help="attacked classes per gallery")
@click.option("--gallery-samples", default=5, show_default=True, type=click.IntRange(1, 100),
              help="reconstructions per class")
@click.option("--gallery-real", default=3, show_default=True, type=click.IntRange(0, 20),
              help="real private images per class")
@click.option("--thumb", default=64, show_default=True, type=click.IntRange(8, 512),
              help="longest side of an embedded image in pixels")
@click.option("--screenshot", type=click.Path(dir_okay=False, path_type=Path),
              help="also save a PNG screenshot of the page (headless Chromium and selenium)")
def report(db: str, records: tuple[Path, ...], output: Path, data_root: str | None, runs: Path | None,
           gallery_classes: int, gallery_samples: int, gallery_real: int, thumb: int,
           screenshot: Path | None, **filters: tuple[str, ...]) -> None:
    """Write one self-contained HTML report: per dataset / protocol / attack / preset, the
    leaderboard (sortable), the accuracy-versus-attack-accuracy plot with intervals and the
    Pareto front, a gallery per defense (the same attacked classes' reconstructions beside real
    private images, framed by the judges' verdicts) and each run's full protocol.

    \b
    Images are embedded; the file loads nothing from anywhere. Real images are read from the
    dataset (never downloaded); when it cannot be loaded the run's grid.png is shown instead.
    \b
    Examples:
      mi-bench report -o report.html
      mi-bench report --records results/bench/attacks.records.jsonl --attack gmi -o gmi.html
    """
    from mi_bench.fsutil import atomic_write
    from mi_bench.results.report import ReportOptions, build_report, screenshot_page
    from mi_bench.results import baseline_margins, defense_effects, leaderboard as board, select

    recs = _load(db, records)
    only = _selection(filters)
    try:
        rows = select(board(recs), **only)
    except USER_ERRORS as exc:
        _fail(str(exc))
    opts = ReportOptions(classes=gallery_classes, samples=gallery_samples, real=gallery_real, thumb=thumb,
                         data_root=data_root, runs=runs)
    shown = "; ".join(f"{k} {', '.join(v)}" for k, v in only.items() if v)
    page = build_report(recs, rows, effects=select(defense_effects(recs), **only),
                        margins=select(baseline_margins(recs), **only),
                        sources=[str(p) for p in records] or [db],
                        filters=f"only {shown}" if shown else "", options=opts)
    atomic_write(output, lambda p: Path(p).write_text(page, encoding="utf-8"))
    log.info("wrote %s (%.0f kB, %d entries)", output, output.stat().st_size / 1e3, len(rows))
    if screenshot:
        try:
            screenshot_page(output, screenshot)
        except RuntimeError as exc:
            _fail(str(exc))
        log.info("wrote %s", screenshot)


@cli.group()
def db() -> None:
    """The results database: an index of the runs' record.json files.

    \b
    Each run writes its record as <results_dir>/<run_id>/record.json first; the SQLite database
    indexes these files. Keep the database on a local disk (SQLite's locking is not reliable on
    NFS or Lustre); on a cluster the JSON files are the source of truth.
    """


@db.command("rebuild")
@click.option("--db", "db_path", default="results/mi_bench.sqlite", show_default=True, help="database to (re)create")
@click.option("--runs", default="results/runs", show_default=True, type=click.Path(path_type=Path),
              help="folder of run folders (results_dir)")
def db_rebuild(db_path: str, runs: Path) -> None:
    """Recreate the database from the record.json files (a broken database is moved aside)."""
    from mi_bench.results import ResultStore

    if not runs.is_dir():
        _fail(f"no run folders at {runs}: pass --runs RESULTS_DIR")
    try:
        n, moved = ResultStore(db_path).rebuild(runs)
    except USER_ERRORS as exc:
        _fail(str(exc))
    if moved:
        log.warning("the old database could not be opened; moved it to %s", moved)
    log.info("indexed %d records from %s into %s", n, runs, db_path)


@db.command("sync")
@click.option("--db", "db_path", default="results/mi_bench.sqlite", show_default=True)
@click.option("--runs", default="results/runs", show_default=True, type=click.Path(path_type=Path))
def db_sync(db_path: str, runs: Path) -> None:
    """Index the record.json files the database does not hold yet (e.g. from Slurm workers)."""
    from mi_bench.results import ResultStore

    try:
        n = ResultStore(db_path).sync(runs)
    except USER_ERRORS as exc:
        _fail(str(exc))
    log.info("indexed %d new record(s) from %s into %s", n, runs, db_path)


@db.command("export")
@click.option("--db", "db_path", default="results/mi_bench.sqlite", show_default=True,
              help="a database, a .jsonl file or a folder of run folders")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSON-lines file: one record a line (gzipped when it ends in .gz)")
@click.option("--merge", is_flag=True, help="keep the records OUTPUT already holds that the database "
              "lacks (a run of the same config in the database replaces its old record)")
@click.option("--replace", is_flag=True, help="overwrite OUTPUT even where it holds records the "
              "database lacks (without --merge or --replace that is an error)")
def db_export(db_path: str, output: Path, merge: bool, replace: bool) -> None:
    """Write every record as JSON lines (the form the repository keeps its results in)."""
    from mi_bench.fsutil import atomic_write
    from mi_bench.results import dump_jsonl, load_records, records_to_export

    try:
        recs = records_to_export(load_records(db_path, upgrade=False), output,  # as stored
                                 merge=merge, replace=replace)
    except USER_ERRORS as exc:
        _fail(str(exc))
    data = dump_jsonl(recs).encode()
    if output.suffix == ".gz":  # as load_records reads it; mtime 0: the same records, the same bytes
        import gzip

        data = gzip.compress(data, compresslevel=9, mtime=0)
    atomic_write(output, lambda p: Path(p).write_bytes(data))
    log.info("wrote %d records to %s", len(recs), output)


@cli.command()
@click.argument("run_id")
@click.option("--db", default="results/mi_bench.sqlite", show_default=True, help="results database")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="port on 127.0.0.1 (0 = any free port)")
@click.option("--no-browser", is_flag=True, help="only print the address; do not open a browser")
@click.option("--data-root", default=None, help="dataset root (default: the run's data_root / $MI_BENCH_DATA)")
def label(run_id: str, db: str, port: int, no_browser: bool, data_root: str | None) -> None:
    """Label a run's reconstructions by eye on a local page (127.0.0.1 only).

    \b
    Each reconstruction is shown beside real private images of the attacked class and of two
    other classes (shuffled, blind to the judges); mark same / different / unsure. Labels are
    stored in the run folder (labels.json) and the leaderboard reports human-judged accuracy
    and each judge's false-positive rate against them. JSON endpoints for labelling without a
    browser: GET /api/items, GET /api/item/<position>.png, POST /api/label (see
    mi_bench/labelling.py). The address is printed on stdout; stop with Ctrl-C.
    """
    import webbrowser

    from mi_bench.labelling import LabelServer, session_for_run
    from mi_bench.results import ResultStore

    if not Path(db).is_file():
        _fail(f"no results database at {db}: run 'mi-bench run' first or pass --db PATH")
    rec = next((r for r in ResultStore(db).records() if r["run_id"] == run_id), None)
    if rec is None:
        _fail(f"no run '{run_id}' in {db}: list run ids with 'mi-bench leaderboard --format json' "
              "or the run folders under results/runs")
    try:
        session = session_for_run(rec, data_root)
        server = LabelServer(session, port)
    except USER_ERRORS as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}): pass another --port, or --port 0")
    click.echo(server.url)
    sys.stdout.flush()
    log.info("labelling run %s (%d reconstructions) at %s - Ctrl-C to stop", run_id, session.n, server.url)
    if not no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    cli(prog_name="mi-bench")


if __name__ == "__main__":
    main()
