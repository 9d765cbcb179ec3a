"""`python -m tests.pipeline.crash_job ARGS`: pipeline.run's command line with the fake model (tests only).

The crash tests (tests/pipeline/test_crash.py) kill whole jobs many times; the fake
model handler (tests/pipeline/fakes.py) keeps each run to the parts they test: the
launcher, reading, decoding, writing and the commit protocol.
"""

from __future__ import annotations

import sys

from pipeline import run
from tests.pipeline.fakes import FakeHandler

if __name__ == "__main__":
    sys.exit(run.main(sys.argv[1:], handler=FakeHandler(max_batch_size=2)))
