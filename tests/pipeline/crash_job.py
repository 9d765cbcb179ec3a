"""`python -m tests.pipeline.crash_job ARGS`: pipeline.run's command line with the fake model (tests only).

The crash tests (tests/pipeline/test_crash.py) kill whole jobs many times; the fake
model handler (tests/pipeline/fakes.py) keeps each run to the parts they test: the
launcher, reading, decoding, writing and the commit protocol.
"""

from __future__ import annotations

import sys

from pipeline import logs, run
from pipeline.job.summary import JobFailed
from tests.pipeline.fakes import FakeHandler


def main(argv: list[str]) -> int:
    logs.configure()
    try:
        run.run(argv, handler=FakeHandler(max_batch_size=2))
    except run.USAGE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JobFailed as error:
        print(str(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
