"""Built-in defenses (installed as ``mi_bench.defenses``). Importing this package registers them."""

from mi_bench.defenses import bido, none  # noqa: F401
from mi_bench.defenses import desmil, dpsgd, mid, qad  # noqa: F401
