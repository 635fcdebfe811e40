"""Built-in defenses (installed as ``mi_bench.defenses``).

Each module here that does not start with ``_`` is imported when the defense registry is first
used (``mi_bench.registry.discover``); its ``@register_defense`` classes register themselves. A
new built-in defense is one new file: see the README, "Adding a defense".
"""
