"""The per-call memory state: one ``MemoryCall``, held in a context variable.

The public context managers (``knn_memory``, ``index_tokens``, ``matrix_tokens``,
``layer_states``) each set a changed copy with ``entered`` and reset it on exit, so
blocks nest and the outer state comes back. A context variable is per thread (a new
thread starts from the empty call): a Continue in one thread never sees another's
memory. Forward kwargs would reach the attention function too (transformers 5 passes
them through for Llama, Qwen2 and GPT-2), but every caller's forward would have to pass
them, where a context manager wraps whatever runs the model."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace


class Stop(Exception):
    """Raised after the last layer a pass needs: the rest is not computed."""


@dataclass(frozen=True)
class MemoryCall:
    """What the memory attention does in the forward passes of one block."""
    read: object = None          # knn_read.Read: read the kNN memory (knn_memory)
    capture: object = None       # knn_capture.Capture: an indexing pass (index_tokens)
    tokens: dict | None = None   # {layer: MatrixTokens} to attend to (matrix_tokens)

    @property
    def empty(self) -> bool:
        return self.read is None and self.capture is None and not self.tokens


_CALL: ContextVar[MemoryCall] = ContextVar("mnemosyne_memory_call", default=MemoryCall())


def current_call() -> MemoryCall:
    """The memory state of this thread's forward passes now."""
    return _CALL.get()


@contextmanager
def entered(**changes):
    """Run the block with the current call's fields ``changes`` replaced."""
    token = _CALL.set(replace(_CALL.get(), **changes))
    try:
        yield _CALL.get()
    finally:
        _CALL.reset(token)
