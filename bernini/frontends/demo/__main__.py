"""``python -m bernini.frontends.demo ...``, as when the demo was a single module."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
