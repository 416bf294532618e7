"""`python -m training_tasks.cli`: the same as `trainctl`."""

from training_tasks.cli.main import main

main()
