"""The study database: Optuna's storage opened with heartbeats and retries, and our own tables
beside Optuna's, under our own Alembic history.

``storage`` opens the storage (``connect``), ``schema`` creates and migrates both (``hpo-infer db
upgrade``), ``tables`` holds our tables, ``record`` writes measurements and exports, ``lock``
serialises the few steps that many agents must not run at once, ``retry`` keeps agents going
through a database restart.
"""
