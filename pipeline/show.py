"""`python -m pipeline.show`: prints the first rows of a run's output."""

import sys

from pipeline.tools.show import main

if __name__ == "__main__":
    sys.exit(main())
