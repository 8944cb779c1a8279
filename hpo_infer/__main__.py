from hpo_infer.cli import main

main()
