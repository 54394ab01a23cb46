"""Shipped presets: TOML files, each a small diff over RunConfig's defaults."""
