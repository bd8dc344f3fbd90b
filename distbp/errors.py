"""distbp's errors: one family of clear, user-facing exceptions, importable by every module.

Every error a user can cause or meet (a bad flag, a bad file, a failed or stalled rank, ranks that
disagree, NaN in the gradient) is a `DistbpError`: the command line prints its message once and
exits 2. Anything else is a bug and ends the whole job with a traceback.
"""


class DistbpError(Exception):
    """A clear, user-facing error of distbp (bad input, failure on a rank, ranks that disagree)."""


class ConfigError(DistbpError, ValueError):
    """A flag or configuration value that cannot work, named with the reason.

    Also a ValueError: an invalid parameter is one in Python's convention, and scikit-learn's tools (the
    estimators of `distbp.sklearn`, GridSearchCV's error_score) expect one."""


class ConfigMismatchError(DistbpError):
    """Ranks hold different values of something that must be the same everywhere (configuration, model shape)."""


class DivergenceError(DistbpError):
    """Parameters that must be identical on every rank are not."""


class StallError(DistbpError):
    """A collective phase made no progress for longer than the watchdog timeout."""


class NonFiniteError(DistbpError):
    """NaN or Inf in the loss or in ∇L."""


class ModelFileError(DistbpError):
    """A model file (`distbp.nn.modelfile`) that cannot be read or does not fit: named with the reason."""
