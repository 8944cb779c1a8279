"""Our own tables beside Optuna's, in the same database, under our own Alembic history.

``schema`` creates and migrates both (``hpo-infer db upgrade``), ``models`` holds the tables,
``record`` writes measurements and exports, ``lock`` serialises the few steps that many agents
must not run at once, ``retry`` keeps agents going through a database restart.
"""
