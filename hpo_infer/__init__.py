"""hpo-infer: measured, not guessed, engine settings for LLM inference (Optuna inside)."""

__version__ = "0.1.0"
