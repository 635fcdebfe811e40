"""Progress where there is no terminal: with stderr a file (``2> log``, a Slurm job) every
running stage logs one line every ``progress_interval_s`` seconds and one at its end; a terminal
keeps the rich bars (mi_bench.runtime.Bars)."""

import logging
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
import torch

import mi_bench.runtime as rt
from mi_bench.runtime import Bars


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture()
def lines(caplog):
    """The messages of the progress logger, as a list that fills while the test runs."""
    caplog.set_level(logging.INFO, logger="mi_bench.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "mi_bench.progress"]


@pytest.fixture()
def reads(to_host_reads):
    return to_host_reads  # conftest's counter of runtime.to_host


def test_lines_at_the_interval_and_at_the_end_with_rate_eta_and_losses(lines, reads):
    clock = Clock()
    bars = Bars(interval_s=10, live=False, clock=clock, timer=False)
    assert bars.lines
    with bars, bars.task("GMI prior", total=25) as bar:
        for i in range(25):  # 2 s a step
            clock.t += 2
            bar.advance(1, d=torch.tensor(0.123456 + i), g=-3.0)
    assert len(lines()) == 6, lines()
    first, *middle, last = lines()
    assert first == "GMI prior: 5/25 (20%), 2 s/step, ETA 40.0s, elapsed 10.0s, d=4.123 g=-3"
    assert middle[-1] == "GMI prior: 25/25 (100%), 2 s/step, ETA 0.0s, elapsed 50.0s, d=24.12 g=-3"
    assert [m.split(",")[0] for m in middle] == [f"GMI prior: {n}/25 ({4 * n}%)" for n in (10, 15, 20, 25)]
    assert last == "GMI prior: done, 25/25 in 50.0s, 2 s/step, d=24.12 g=-3"
    # tensors read only near a due line (one read ahead for the timer thread, one for the line)
    # and at the end, not at each of the 25 steps
    assert reads["n"] <= 2 * 5 + 1


def test_fast_steps_show_steps_per_second_and_minutes(lines):
    clock = Clock()
    bars = Bars(interval_s=30, live=False, clock=clock, timer=False)
    with bars.task("kedmi GAN", total=100_000) as bar:
        for _ in range(1280):
            clock.t += 1 / 32  # exact in binary
            bar.advance(1, loss=0.5)
    assert lines() == ["kedmi GAN: 960/100000 (1%), 32 steps/s, ETA 51m35s, elapsed 30.0s, loss=0.5",
                       "kedmi GAN: done, 1280/100000 in 40.0s, 32 steps/s, loss=0.5"]


def test_a_failing_loop_ends_with_a_stopped_line_and_no_tensor_read(lines, reads):
    clock = Clock()
    bars = Bars(interval_s=10, live=False, clock=clock, timer=False)
    with pytest.raises(FloatingPointError):
        with bars.task("train target", total=30) as bar:
            clock.t += 4
            bar.advance(1, loss=torch.tensor(0.5))
            clock.t += 1
            n = reads["n"]
            raise FloatingPointError("loss became nan")
    assert reads["n"] == n
    assert lines() == ["train target: stopped at 1/30 after 5.0s, loss=0.5"]  # the value read before


def test_a_stage_without_steps_gets_running_lines_and_an_end_line(lines):
    clock = Clock()
    bars = Bars(interval_s=10, live=False, clock=clock, timer=False)
    with bars.stage("decode images"):
        clock.t += 12
    assert lines() == ["decode images: done in 12.0s"]


def test_timer_thread_writes_lines_while_a_step_takes_longer_than_the_interval(lines):
    """One slow epoch (no ``advance`` for 1 s) under a 0.1 s interval: a line every 0.1 s,
    with the value last passed; the thread ends with the task."""
    interval = 0.1
    stamps = []
    handler = logging.Handler()
    handler.emit = lambda record: stamps.append(record.created)
    logging.getLogger("mi_bench.progress").addHandler(handler)
    try:
        with Bars(interval_s=interval, live=False) as bars, bars.task("train judge", total=3) as bar:
            bar.advance(1, loss=0.25)
            t0 = time.time()
            time.sleep(1.0)
        n = len(lines())
        time.sleep(3 * interval)
    finally:
        logging.getLogger("mi_bench.progress").removeHandler(handler)
    assert len(lines()) == n  # nothing after the end
    assert not any(t.name.startswith("progress: train judge") for t in threading.enumerate())
    periodic = lines()[:-1]
    assert len(periodic) >= 7, lines()
    assert all(m.startswith("train judge: 1/3 (33%), ") and m.endswith("loss=0.25") for m in periodic)
    assert lines()[-1].startswith("train judge: done, 1/3 in 1.")
    gaps = [b - a for a, b in zip([t0, *stamps], stamps)]
    assert max(gaps) < interval + 0.15, gaps  # 1 s without a step would leave a 1 s gap


def test_terminal_keeps_the_rich_bars_and_logs_no_lines(lines, capsys):
    with Bars(live=True, interval_s=0.01) as bars, bars.task("GMI inversion", total=3) as bar:
        for _ in range(3):
            time.sleep(0.02)
            bar.advance(1, loss=torch.tensor(1.5))
    assert lines() == []
    err = capsys.readouterr().err
    assert "GMI inversion" in err and "3/3" in err and "loss=1.5" in err


def test_quiet_bars_log_nothing(lines):
    with Bars(enabled=False, interval_s=0.01) as bars, bars.task("t", total=2) as bar:
        time.sleep(0.05)
        bar.advance(2, loss=1.0)
    assert lines() == [] and not bars.lines and not bars.live


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty

    def write(self, s):
        return len(s)

    def flush(self):
        pass


@pytest.mark.parametrize("tty,env,live", [
    (True, {}, True),
    (False, {}, False),
    (False, {"FORCE_COLOR": "1"}, False),  # coloured output into a file is still a file
    (True, {"TERM": "dumb"}, False),
    (True, {"TTY_COMPATIBLE": "0"}, False),
])
def test_bars_or_lines_follow_whether_stderr_is_a_terminal(monkeypatch, tty, env, live):
    for k in ("FORCE_COLOR", "TTY_COMPATIBLE", "TERM"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(rt.console, "_environ", os.environ)
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    assert rt.interactive() is live
    assert Bars().live is live and Bars().lines is not live


def test_interval_must_be_positive_and_changes_no_hash():
    from mi_bench.config import ConfigError, compose, config_hash, to_dict

    with pytest.raises(ValueError, match="progress_interval_s"):
        Bars(interval_s=0)
    with pytest.raises(ConfigError, match="progress_interval_s"):
        compose(["preset=smoke", "progress_interval_s=0"])
    assert compose(["progress_interval_s=2.5"]).progress_interval_s == 2.5
    assert config_hash(to_dict(compose(["progress_interval_s=2.5"]))) == config_hash(to_dict(compose([])))


LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (.+?): (.*)$")
PERIODIC = re.compile(r"^\d+/(\d+) \(\d+%\), [\d.]+ (steps/s|s/step), ETA [\dhms.]+, elapsed [\dhms.]+, "
                      r".*\b\w+=-?[\d.]+(e[-+]\d+)?\b")


@pytest.mark.slow  # a smoke run: 15-30 s
def test_run_with_stderr_in_a_file_logs_every_stage_at_the_interval(tmp_path):
    """``mi-bench run ... 2> file`` (smoke, a 0.2 s interval; stages made a few intervals long):
    target, judge, prior and inversion each log lines with step, rate, ETA and a loss, never
    more than the interval (plus slack for a loaded machine) apart, and a done line."""
    interval = 0.2
    cmd = ["mi-bench", "run", "preset=smoke", f"progress_interval_s={interval}",
           f"cache_dir={tmp_path / 'cache'}", f"results_db={tmp_path / 'r.sqlite'}",
           f"results_dir={tmp_path / 'runs'}", f"data_root={tmp_path / 'data'}",
           # 6 target epochs: smoke's 2 (0.4 s on an idle machine) can end before a periodic line
           "target.epochs=6", "judges=[eval,resnet]", "judge.resnet.epochs=2", "attack.gan_steps=12",
           "attack.iterations=40",
           "evaluator.epochs=1", "eval.fid_inception=false", "eval.lpips=false"]
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=600,
                           env={**os.environ, "MI_BENCH_OFFLINE": "1"}, cwd=tmp_path)
    text = log.read_text()
    assert r.returncode == 0, text
    assert "━" not in text and "\r" not in text  # no bars drawn into the file
    by_stage: dict[str, list[tuple[datetime, str]]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            by_stage.setdefault(m[2], []).append((datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f"), m[3]))
    stages = ("train target", "train evaluator", "train judge-resnet", "GMI prior (WGAN-GP)", "GMI inversion")
    for stage in stages:
        got = by_stage.get(stage)
        assert got, f"no progress line for {stage}:\n{text}"
        if stage != "train evaluator":  # one epoch: its lines have no loss before the end
            assert any(PERIODIC.match(msg) for _, msg in got), (stage, got)
        assert got[-1][1].startswith("done, "), (stage, got)
        gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(got, got[1:])]
        assert max(gaps, default=0) < interval + 0.4, (stage, gaps)  # an unbeaten 1-2 s epoch fails
    for stage in ("data (digits)", "scoring"):  # stages without steps: at least their end line
        got = by_stage.get(stage)
        assert got and got[-1][1].startswith("done in "), (stage, got, text)
