"""One Optuna study per (engine, model, GPU, workload): its name, sampler, creation, our keys on its
trials, the verdicts read from them, and the one module that touches Optuna's private API."""
