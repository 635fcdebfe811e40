"""The ``mi-bench`` command line.

    mi-bench run defense=bido attack=gmi            # train, attack, score, store, show
    mi-bench run dataset=mnist preset=quick seed=3 defense.lambda_y=1.0 --json
    mi-bench sweep defense=bido defense.lambda_y=0.5,1,2 seed=0,1
    mi-bench show-config defense=bido-coco
    mi-bench list
    mi-bench leaderboard --format markdown
    mi-bench label RUN_ID --no-browser              # label reconstructions by eye (local page)

Every user mistake exits with status 2 and one ``error:`` line on stderr before work starts.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
from pathlib import Path

import click
from rich.table import Table

from mi_bench.artifacts import ArtifactError
from mi_bench.config import ConfigError, RunConfig, compose, config_hash, to_dict, to_yaml
from mi_bench.data import DataUnavailable
from mi_bench.registry import REGISTRIES, RegistryError
from mi_bench.runtime import Bars, console, setup_logging

log = logging.getLogger("mi_bench")

USER_ERRORS = (ConfigError, DataUnavailable, ArtifactError, RegistryError)


def _fail(msg: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    sys.exit(2)


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


def _summary_table(rec: dict) -> Table:
    m = rec["metrics"]
    cfg = rec["config"]
    t = Table(title=f"run {rec['run_id']}: {cfg['attack']['name']} vs {rec['defense_label']} "
                    f"on {cfg['dataset']['name']} ({cfg['dataset']['protocol']}, preset {cfg['preset']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("protocol", overflow="fold")
    pct = lambda v: "failed" if v is None else f"{100 * v:.1f}%"  # noqa: E731

    def num(k: str) -> str:
        if m.get(k) is not None:
            return f"{m[k]:.3f}"
        if k in m.get("metric_absent", {}):
            return f"n/a ({m['metric_absent'][k][:60]})"
        return f"failed ({m['metric_errors'].get(k, '')[:60]})"
    n_priv = len(rec["protocol"]["data"]["private_classes"])
    t.add_row("target acc", pct(m["target_acc"]), "private test split")
    t.add_row("eval acc", pct(m["eval_acc"]), f"evaluator, all {rec['protocol']['data']['num_domain_classes']} classes")
    ci = m.get("attack_acc_ci")
    acc = pct(m["attack_acc"]) + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")
    t.add_row("attack acc (top-1)", acc, f"95% Wilson interval; chance {100 / n_priv:.0f}% over private "
              f"classes; {m['n_reconstructions']} reconstructions")
    judges = rec["protocol"].get("judges") or {}
    for name, res in (m.get("judges") or {}).items():
        if name == "eval":
            continue
        info = judges.get(name, {})
        lo, hi = res["acc_ci"]
        t.add_row(f"{name} judge acc", f"{pct(res['acc'])} [{100 * lo:.0f}, {100 * hi:.0f}]",
                  f"{info.get('architecture', '?')}, {info.get('augmentation', '?')} augmentation, "
                  f"adversarial {info.get('adversarial', '?')}; rejected {100 * res['rejected']:.0f}%")
    if m.get("consensus_acc") is not None:
        lo, hi = m["consensus_acc_ci"]
        t.add_row("consensus acc", f"{pct(m['consensus_acc'])} [{100 * lo:.0f}, {100 * hi:.0f}]",
                  f"every judge ({', '.join(m['consensus_judges'])}) names the attacked class")
    t.add_row("attack acc (top-5)", pct(m["attack_acc_top5"]), "")
    div = m.get("diversity")
    if div:
        flagged = div["collapsed_classes"]
        t.add_row("diversity", f"{m['diversity_ratio']:.2f} x real",
                  "mean pairwise distance of reconstructions / of real images, per class; "
                  + (f"COLLAPSED classes: {flagged}" if flagged else "no class collapsed"))
    elif "diversity" in m.get("metric_errors", {}):
        t.add_row("diversity", "failed", m["metric_errors"]["diversity"][:60])
    t.add_row("per class", " ".join(f"{k}:{100 * v:.0f}" for k, v in m["per_class"].items()), "")
    t.add_row("KNN dist", num("knn_dist"), "evaluator features, same-class private train")
    t.add_row("FID (eval feats)", num("fid_eval"), "vs private train")
    t.add_row("FID (Inception)", num("fid_inception"), "")
    t.add_row("trained", ", ".join(rec["trained"]) or "nothing (all cached)", "")
    t.add_row("wall time", f"{rec['wall_seconds']:.1f}s",
              " ".join(f"{k}={v:.1f}s" for k, v in rec["stage_seconds"].items()))
    t.add_row("grid", str(rec.get("grid")), "")
    return t


def _run_one(cfg: RunConfig, quiet: bool) -> dict:
    from mi_bench.pipeline import run

    try:
        with Bars(enabled=not quiet) as bars:
            return run(cfg, bars)
    except USER_ERRORS as exc:
        _fail(str(exc))
    except ValueError as exc:  # bad values caught at run time (e.g. classes, checkpoint shape)
        _fail(str(exc))
    raise AssertionError("unreachable")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print the run record as JSON on stdout")
@click.option("--quiet", is_flag=True, help="no progress bars")
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
        console.print(_summary_table(rec))


def _expand(token: str) -> list[str]:
    key, _, value = token.partition("=")
    if not value or value.startswith("[") or "," not in value:
        return [token]
    return [f"{key}={v}" for v in value.split(",")]


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--force", is_flag=True, help="re-run configurations that already have a record")
@click.option("--quiet", is_flag=True, help="no progress bars")
def sweep(overrides: tuple[str, ...], force: bool, quiet: bool) -> None:
    """Run the cartesian product of comma-separated values (``defense.lambda_y=0.5,1,2``).

    A configuration whose record already exists (same config hash) is skipped, so an
    interrupted sweep resumes where it stopped."""
    from mi_bench.results import ResultStore

    combos = [list(c) for c in itertools.product(*[_expand(t) for t in overrides])]
    cfgs = [_compose(tuple(c)) for c in combos]  # validate everything before any work
    for i, (tokens, cfg) in enumerate(zip(combos, cfgs), 1):
        if not force and ResultStore(cfg.results_db).has_config(config_hash(to_dict(cfg))):
            log.info("[%d/%d] %s: record exists, skipped", i, len(cfgs), " ".join(tokens))
            continue
        log.info("[%d/%d] %s", i, len(cfgs), " ".join(tokens))
        rec = _run_one(cfg, quiet)
        m = rec["metrics"]
        log.info("  target acc %.3f, attack acc %.3f (%.1fs)", m["target_acc"], m["attack_acc"], rec["wall_seconds"])


@cli.command("show-config", context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
def show_config(overrides: tuple[str, ...]) -> None:
    """Print the resolved configuration."""
    click.echo(to_yaml(_compose(overrides)), nl=False)


@cli.command("list")
def list_cmd() -> None:
    """List registered attacks, defenses, datasets and models."""
    from rich.console import Console

    from mi_bench.config import group_options

    out = Console()  # stdout: the listing is the command's output
    for kind, reg in REGISTRIES.items():
        t = Table(title=f"{kind}s", title_justify="left")
        t.add_column("name", style="bold")
        t.add_column("description")
        t.add_column("paper")
        for name, obj in reg.items():
            t.add_row(name, getattr(obj, "summary", "") or (obj.__doc__ or "").strip().split("\n")[0],
                      getattr(obj, "paper", ""))
        out.print(t)
        for n, why in reg.broken.items():
            out.print(f"[yellow]broken {kind} plugin '{n}' (skipped): {why}[/]")
    out.print(f"presets: {', '.join(group_options('preset'))}")
    out.print(f"defense options (with aliases): {', '.join(group_options('defense'))}")


@cli.command()
@click.option("--db", default="results/mi_bench.sqlite", show_default=True, help="results database")
@click.option("--format", "fmt", default="table",
              type=click.Choice(["table", "markdown", "csv", "json", "latex", "html"]))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="write to a file")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="also save a tradeoff plot (PNG)")
def leaderboard(db: str, fmt: str, output: Path | None, plot: Path | None) -> None:
    """Stored results grouped over seeds (mean with 95% interval), every judge, the human check
    where runs were labelled, and (markdown) each attack's margin over the calibration baselines."""
    from mi_bench.results import (
        PROTOCOL_NOTE, ResultStore, baseline_margins, headers, leaderboard as board, render, table_rows,
    )

    if not Path(db).is_file():
        _fail(f"no results database at {db}: run 'mi-bench run' first or pass --db PATH")
    try:
        records = ResultStore(db).records()
        rows = board(records)
    except ArtifactError as exc:  # an unreadable labels.json in a run folder
        _fail(str(exc))
    if plot:
        from mi_bench.viz import tradeoff_plot
        tradeoff_plot(plot, rows, "accuracy vs leakage")
    if fmt == "table" and output is None:
        t = Table(title="mi-bench leaderboard", caption=PROTOCOL_NOTE)
        for h in headers(rows):
            t.add_column(h)
        for cells in table_rows(rows):
            t.add_row(*cells)
        from rich.console import Console
        Console().print(t)
        return
    text = render(rows, "markdown" if fmt == "table" else fmt, baseline_margins(records))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        log.info("wrote %s", output)
    else:
        click.echo(text, nl=False)


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
