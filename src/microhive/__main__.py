"""``python -m microhive``: the same as the ``microhive`` command."""

from microhive.cli import main

if __name__ == "__main__":
    main()
