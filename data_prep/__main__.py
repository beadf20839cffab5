"""``python -m data_prep ...`` -> :func:`data_prep.cli.main`."""
from .cli import main

main()
