"""One trial's process: the runner (agent side) spawns it, follows its protocol and kills its whole
tree; :mod:`process` is its entry point (``python -m hpo_infer.trial.process``)."""
