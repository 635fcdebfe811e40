"""Packaged YAML configs: ``<group>/<option>.yaml`` for dataset, defense, attack and preset."""
