"""Shipped target descriptions (one TOML file per target), installed as package data `edgenas.target_files`."""
