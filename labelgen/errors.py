"""Errors a user can cause. Each message names the bad value, the file, and what to do."""


class LabelgenError(Exception):
    """Base of every error labelgen reports to a user (the CLI prints these without a traceback)."""


class ConfigError(LabelgenError):
    """A recipe or override is wrong."""


class DataError(LabelgenError):
    """A data set, image, mask or tags file is wrong."""


class ArtifactError(LabelgenError):
    """An artifact is missing, locked, or damaged."""


class LockHeldError(ArtifactError):
    """Another process is writing the same artifact."""


class RankLostError(LabelgenError):
    """A data-parallel training lost one of its ranks' workers; the rerun resumes from its checkpoint."""
