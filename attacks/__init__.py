"""Built-in attacks (installed as ``mi_bench.attacks``).

Each module here that does not start with ``_`` is imported when the attack registry is first
used (``mi_bench.registry.discover``); its ``@register_attack`` classes register themselves. A new
built-in attack is one new file: see the README, "Adding an attack". ``common`` holds the
helpers shared by the built-in attacks (GAN blocks, prior state dicts, frozen targets).
"""
