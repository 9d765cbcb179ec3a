"""`python -m pipeline.search`: queries an index by image or image_id."""

import sys

from pipeline.tools.search import main

if __name__ == "__main__":
    sys.exit(main())
