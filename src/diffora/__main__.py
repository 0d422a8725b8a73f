"""`python -m diffora ...` runs the command line (the form `accelerate launch -m` and `torchrun -m` need)."""

from diffora.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
