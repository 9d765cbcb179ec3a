"""`python -m pipeline.upgrade`: converts a 0.1 output into the two Delta tables."""

import sys

from pipeline.tools.upgrade import main

if __name__ == "__main__":
    sys.exit(main())
