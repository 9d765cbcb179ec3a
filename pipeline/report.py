"""`python -m pipeline.report`: writes a run's self-contained HTML report."""

import sys

from pipeline.tools.report import main

if __name__ == "__main__":
    sys.exit(main())
