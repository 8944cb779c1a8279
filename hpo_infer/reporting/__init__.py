"""Reading a study back: report, export, the Pareto view, dashboard notes, campaign views, doctor."""
