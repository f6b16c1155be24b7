"""``python -m pal ARGS`` (and the ``pal`` script the package installs): the pal command line."""

import sys

from ._pal import cli


def main() -> None:
    try:
        cli(sys.argv[1:])
    except Exception as e:  # the command line prints its error and fails, as the binary does
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
