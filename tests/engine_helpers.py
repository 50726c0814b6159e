"""What the engine tests share: a stand-in for the model's stream."""
from __future__ import annotations


def fake_stream(pieces, stop_reason="eos"):
    """A writer.stream replacement yielding ``pieces`` (one token each), honouring Stop."""
    def stream(lm, ids, sampling, cancel=None, prefix=None, prefix_key=None,
               forward_context=None, result=None):
        for p in pieces:
            if cancel is not None and cancel.is_set():
                result.stop_reason = "cancelled"
                return
            result.text += p
            result.new_tokens += 1
            yield p
        result.stop_reason = stop_reason
    return stream
