"""Built-in attacks (installed as ``mi_bench.attacks``). Importing this package registers them."""

from mi_bench.attacks import gmi  # noqa: F401
from mi_bench.attacks import baselines, kedmi, plgmi  # noqa: F401
