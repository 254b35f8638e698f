"""Named exceptions for domain failures and the CLI's documented exit codes."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of the ``crowdtrain`` command (documented in README.md)."""

    OK = 0
    ERROR = 1  # unexpected failure
    USAGE = 2  # bad command line, config file or recipe name
    NETWORK = 3  # address malformed or unreachable, port in use, swarm not found
    RUN_CONFIG = 4  # run configuration or its assets fail validation or signature checks
    NOT_INVITED = 5  # the run is private and this peer's invite is missing, invalid or expired
    INTERRUPTED = 130  # Ctrl-C


class CrowdtrainError(Exception):
    """Base class: a failure that the CLI reports as one line and a non-zero exit code."""

    exit_code: ExitCode = ExitCode.ERROR


class UsageError(CrowdtrainError):
    exit_code = ExitCode.USAGE


class NetworkError(CrowdtrainError):
    exit_code = ExitCode.NETWORK


class RunConfigError(CrowdtrainError):
    exit_code = ExitCode.RUN_CONFIG


class InviteError(CrowdtrainError):
    """A private run refuses this peer: no invite, or one that is forged, expired or for someone else."""

    exit_code = ExitCode.NOT_INVITED
