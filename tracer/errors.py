"""The errors hoptrace reports to a person: one line, an exit status, maybe a hint.

``cli.main()`` is the one place that turns these into an exit status and a
line on stderr; ``--debug`` re-raises instead.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEM = 1  # the job ran and found a problem (probe: packet dropped)
EXIT_USAGE = 2  # bad usage or bad input
EXIT_PRIVILEGE = 3  # missing privilege or kernel feature


class HoptraceError(Exception):
    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(HoptraceError):
    """Bad flags or arguments."""


class FilterError(UsageError):
    """A pcap-filter expression that does not compile."""


class CaptureFileError(HoptraceError):
    """An unreadable, truncated or unsupported capture file."""


class KernelFeatureMissing(HoptraceError):
    """BTF, bcc, a header tree, a tracepoint, ... is not there."""

    exit_code = EXIT_PRIVILEGE


class PrivilegeError(HoptraceError):
    """Not root, or a capability is missing."""

    exit_code = EXIT_PRIVILEGE


class ProbeLoadError(KernelFeatureMissing):
    """bcc failed to compile or the kernel refused to load/attach a program."""


class LabError(HoptraceError):
    """The lab could not be built, or a scenario's set-up failed."""

    exit_code = EXIT_PROBLEM


class ProblemFound(HoptraceError):
    """The job ran and found a problem (exit 1), e.g. a probe whose packet died."""

    exit_code = EXIT_PROBLEM
