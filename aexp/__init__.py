"""aexp: config-driven autoencoder experiments (train, render, evaluate)."""

__version__ = "0.1.0"
