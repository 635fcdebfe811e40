"""CPU speed options (issue 21): channels-last training of the classifiers and bfloat16 where the
CPU has it. Both change float rounding only; they are runtime options (``channels_last``,
``amp``) carried by :class:`mi_bench.runtime.Accel`.

Channels-last (config key ``channels_last``, default ``auto``; like ``tf32`` it is left out of
config hashes and artifact keys): ``auto`` trains a registered classifier in
``torch.channels_last`` on the CPU when :data:`CPU_CHANNELS_LAST` says its family is faster so
(measured: ``results/bench/cpu_speed.md``); ``always`` on any device and model, ``never`` NCHW.
The GAN priors are not affected (the WGAN-GP step measured no faster channels-last).

bfloat16 (``amp=bf16``, off by default, a cache key when on): on the CPU it autocasts only when
:func:`cpu_has_native_bf16`; otherwise oneDNN would emulate bfloat16 (slower than float32), so
the run warns once and trains in float32 (the record's ``machine.cpu_native_bf16`` says which).
"""

from __future__ import annotations

import functools
import logging
import subprocess
import sys

import torch

log = logging.getLogger(__name__)

CHANNELS_LAST_CHOICES = ("auto", "always", "never")  # not on/off: YAML reads those as booleans

# channels_last=auto on the CPU, per registered model: one training step (batch 64, 1 thread)
# channels-last vs NCHW, interleaved in one process - results/bench/cpu_speed.md (re-measure
# with results/bench/cpu_speed.sh before changing an entry). Models not listed (plugins') stay NCHW.
CPU_CHANNELS_LAST: dict[str, bool] = {
    "mcnn": True, "scnn": True, "resnet8": True, "resnet20": True, "madrynet": True,
    "vgg16_bn": True, "ir18": True, "facenet": True, "facenet64": True, "ir152": True,
}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: x86 ``avx512_bf16`` or ``amx_bf16``, ARM
    ``bf16`` (Linux: ``/proc/cpuinfo`` flags; macOS: ``hw.optional.arm.FEAT_BF16``)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = None
    if text is not None:
        flags: set[str] = set()
        for line in text.splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if sys.platform == "darwin":
        try:
            r = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True,
                               text=True, timeout=5)
            return r.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            return False
    return False


_warned: set[str] = set()


def bf16_runs(device: torch.device | str) -> bool:
    """Whether ``amp=bf16`` autocasts on ``device``: always on accelerators; on the CPU only with
    native bfloat16 (else one warning per process, and float32)."""
    if torch.device(device).type != "cpu" or cpu_has_native_bf16():
        return True
    if "cpu" not in _warned:
        _warned.add("cpu")
        log.warning("amp=bf16: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16 flag); "
                    "running float32 instead")
    return False


def train_memory_format(setting: str, model: str, device: torch.device | str) -> torch.memory_format:
    """The memory format the classifier ``model`` (registered name) trains in under
    ``channels_last=setting`` on ``device``."""
    on = setting == "always" or (setting == "auto" and torch.device(device).type == "cpu"
                             and CPU_CHANNELS_LAST.get(model, False))
    return torch.channels_last if on else torch.contiguous_format
