"""Orchestration: an agent's optimize loop and what drives it (start, seeding, stop rules, packs,
outcomes, re-validation), and the flows built on it: transfer, campaigns, fleets, grid import."""
