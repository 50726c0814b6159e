"""The one error the writer sees: everything else is a bug, logged with its traceback."""
from __future__ import annotations


class UserError(Exception):
    """Shown to the writer as is: the message is one clear sentence about their novel,
    their input or their machine (say, a full disk), never a traceback.

    The engine's writer-facing errors derive from it (ProjectError, ModelError,
    MatrixError, SemanticError, AdapterError, GateError, ...); the UI shows a UserError's
    message and treats any other exception as an internal error (app/actions.py).
    """
