"""Every error type of mi-bench, in one place.

Two families:

* **User errors** (:data:`USER_ERRORS`): bad input - a config mistake, missing data, an unusable
  checkpoint, cache or results path, an unknown plugin. ``str(err)`` is one line naming the
  problem and the fix; the CLI prints it and exits with status 2 before any work (or, found
  during the work, with status 1).
* **Absent by design**: a metric or distance that cannot run here (weights not on disk offline).
  It is recorded as ``n/a`` with its reason, never as a failure and never as 0.

Anything else raised on the metric path is a failure of that metric: recorded as ``failed`` with
its reason and logged with its traceback; with ``MI_BENCH_STRICT_METRICS=1`` (set for the test
suite) it is raised instead, so a programming error cannot pass as a ``failed`` column
(:func:`mi_bench.metrics.guard`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration mistake; ``str(err)`` is the one-line message."""


class DataUnavailable(RuntimeError):
    """A dataset's files are missing and cannot be downloaded. The message says where to put them."""


class ArtifactError(RuntimeError):
    """A checkpoint or cached artifact cannot be used; the message names the file and the fix."""


class ArtifactCorrupt(ArtifactError):
    """A cached artifact cannot be read or fails its checksum (the cache moves it aside)."""


class ResultsError(RuntimeError):
    """The results database or a record cannot be used; the message names the file and the fix."""


class RegistryError(KeyError):
    """Unknown or duplicate plugin name. ``str(err)`` is a one-line, user-facing message."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0])


class NotWritable(OSError):
    """A folder cannot be written, or its file system is (nearly) full."""


class LaunchError(RuntimeError):
    """A sweep's cells could not be handed to their launcher (Slurm refused the submission)."""


class WeightsUnavailable(RuntimeError):
    """Weights are not on disk and may not or could not be downloaded: a metric absent by design."""


class DistanceUnavailable(RuntimeError):
    """A registered perceptual distance cannot run here (the message says why)."""


# Exceptions whose message is a complete one-line explanation for the user (bad input, missing
# or corrupt data, unusable checkpoint or results path).
USER_ERRORS = (ConfigError, DataUnavailable, ArtifactError, RegistryError, ResultsError, LaunchError)


STRICT_METRICS_ENV = "MI_BENCH_STRICT_METRICS"


def strict_metrics() -> bool:
    """Whether a failing metric raises (``MI_BENCH_STRICT_METRICS=1``; the test suite sets it)."""
    import os

    return os.environ.get(STRICT_METRICS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def metric_failure(exc: BaseException, metric: str) -> str:
    """Call in the ``except`` block of a metric's computation: the reason to record for the
    failed metric (``"Type: message"``), after logging it with its traceback. Under
    :func:`strict_metrics` the exception is raised instead, so a programming error on the metric
    path fails loudly rather than as a ``failed`` column."""
    import logging

    if strict_metrics():
        raise exc
    logging.getLogger("mi_bench.metrics").warning("metric %s failed: %s: %s", metric, type(exc).__name__,
                                                  exc, exc_info=exc)
    return f"{type(exc).__name__}: {exc}"
