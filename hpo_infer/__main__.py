from hpo_infer.cli import run

run()
