"""Where the memory matrix meets the model: write it from token ids, read it as the
memory tokens of its layer (CountSketch or a trained adapter). Used by a novel's
matrix (matrix_project.py), the score CLI and the benchmarks."""
from __future__ import annotations

from .matrix import MatrixSettings, MemoryMatrix

SEGMENT = 256  # tokens per write when a text is written segment by segment


def depth(lm) -> int:
    return lm.shape[0]


def write_ids(lm, mm: MemoryMatrix, ids, segment: int = SEGMENT, chapter: int = 0,
              prefix=(), progress=None) -> MemoryMatrix:
    """Write every full ``segment`` of ``ids`` (each read after the one before)."""
    segs = [(chapter, list(ids[a:a + segment]))
            for a in range(0, len(ids) - segment + 1, segment)]
    return write_segments(lm, mm, segs, prefix, progress)


def write_segments(lm, mm: MemoryMatrix, segments, prefix=(), progress=None) -> MemoryMatrix:
    """Write (chapter, token ids) segments in order, each read after the one before
    (the first after ``prefix``). ``progress``: callable(done, total) or None."""
    from .attention import layer_states

    layer = mm.settings.resolved_layer(depth(lm))
    prev = list(prefix)
    for i, (chapter, seg) in enumerate(segments):
        mm.write(layer_states(lm, layer, seg, prefix=prev), chapter)
        prev = seg
        if progress:
            progress(i + 1, len(segments))
    return mm


def matrix_of(lm, ids, settings: MatrixSettings | None = None, segment: int = SEGMENT):
    """A fresh matrix holding ``ids`` (e.g. a book's past, for scoring)."""
    mm = MemoryMatrix(lm.model.config.hidden_size, settings or MatrixSettings())
    return write_ids(lm, mm, ids, segment)


def read_tokens(lm, mm: MemoryMatrix, adapter=None) -> dict:
    """{layer: MatrixTokens} for ``matrix_tokens``: the summary rows projected by the
    layer's own key/value maps (no gradient)."""
    import torch

    from .attention import MatrixTokens, project_tokens, rotary_inv_freq

    layer = mm.settings.resolved_layer(depth(lm))
    with torch.no_grad():
        if adapter is not None:
            x, bias = adapter.summary(mm)
            bias = bias.detach()
        else:
            x, bias = torch.from_numpy(mm.summary()), mm.settings.read_bias
        k, v = project_tokens(lm, layer, x)
    return {layer: MatrixTokens(k, v, bias, mm.settings.distance, rotary_inv_freq(lm))}
