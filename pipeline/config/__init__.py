"""Configuration read from YAML: model cards, the data catalog, the bounded YAML loader and the choice registries."""
