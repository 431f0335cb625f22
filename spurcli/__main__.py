"""`python -m spurcli`: also what `torchrun -m spurcli` and `accelerate launch -m spurcli` run."""

from spurcli.cli import main

if __name__ == "__main__":
    main()
