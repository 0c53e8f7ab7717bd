"""The one base error of cxr-triage: every error a user can cause or meet is a :class:`CxrError`.

The CLI turns a ``CxrError`` into one line on stderr and exit status 2, never a traceback. Subclasses live
beside the code that raises them (:class:`cxr.pixels.ImageError`, :class:`cxr.admin_key.AdminKeyError`,
:class:`ServerError`, ...).
"""
from __future__ import annotations


class CxrError(RuntimeError):
    """Something the user can act on went wrong; the message says what and, where it helps, what to do."""


class ServerError(CxrError):
    """Triton could not be started, did not become ready, or refused an admin call."""
