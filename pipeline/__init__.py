"""The Beam job around VGG16 (pipeline.job), its output contract, the tools that read it (pipeline.tools)."""

import warnings

# Google's client libraries (Beam's gcp extra) warn on import about the grpcio and Python
# versions that Beam pins (FutureWarning, e.g. "grpcio < 1.83.0 does not support
# Post-Quantum Cryptography"): nothing a user of this job can act on, and it would bury
# the one `error:` line of a launcher check.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")

# Every Beam metric of the job (counters, distributions) lives in this namespace.
METRICS_NAMESPACE = "vgg16"


class ConfigError(ValueError):
    """A configuration file or flag the job cannot run with; the message says which and why.

    It lives here, below every module, so that each config dataclass (InputConfig,
    DecodeConfig, ModelConfig) raises it for its own fields, and pipeline.run reports it as
    one `error:` line with exit status 2.
    """
