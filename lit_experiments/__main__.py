from lit_experiments.cli import main

main()
