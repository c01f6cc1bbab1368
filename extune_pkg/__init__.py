"""extune: distributed hyperparameter search for explanation-driven training."""

__version__ = "0.1.0"
