"""`python -m pipeline.index`: builds a faiss index of a run's fc7 embeddings."""

import sys

from pipeline.tools.index import main

if __name__ == "__main__":
    sys.exit(main())
