"""`python -m pipeline.export`: an output's fc7 in clip-retrieval's embeddings layout."""

import sys

from pipeline.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
