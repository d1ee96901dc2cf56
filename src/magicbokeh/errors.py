"""The one exception type that reaches users.

A :class:`MagicBokehError` carries a single-line message that names the problem and the fix.
The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
"""

from __future__ import annotations


class MagicBokehError(ValueError):
    """Bad input or an impossible request, explained in one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
