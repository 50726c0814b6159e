"""Keep a kNN store in line with a book: load it, distrust it, and index what changed.

The store itself (engine/memory/knn.py) never runs the model; this is the one place
that does so to fill it (through the attention hook's ``index_tokens``), so knn.py and
attention.py do not import each other.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .knn import KNN_DIR, KNNSettings, KNNStore, StoreError, clean_stale, new_store, store_folder

log = logging.getLogger("engine.memory.knn")  # the store's log, as before the move


def ensure_store(folder, lm, token_ids, settings: KNNSettings | None = None,
                 progress=True, save: bool = True, store: KNNStore | None = None) -> KNNStore:
    """Load the store at ``folder`` (a project folder or its memory/knn folder) and
    bring it in line with ``token_ids`` (the whole manuscript, in order).

    Foreign (other model, other layers), missing or corrupt stores are rebuilt from
    scratch; otherwise the longest common prefix of stored and current tokens is
    kept, and everything after it (edits, deletions, new text) is re-indexed, with
    ``overlap`` tokens of real context before it. ``store``: one already loaded
    (and trusted) for this folder, used instead of reading the files again.
    ``progress``: a bool (tqdm bar) or a callable(done, total).
    """
    from .attention import index_tokens  # runs the model: torch, only when indexing

    settings = settings or KNNSettings()
    folder = Path(folder)
    if (folder / "novel.db").exists() or folder.name != KNN_DIR:
        folder = store_folder(folder)
    clean_stale(folder)
    depth = lm.shape[0]
    ids = np.asarray(list(token_ids), np.int64)
    try:
        if store is not None and (store.fingerprint != lm.fingerprint or
                                  store.saved_stamp != settings.stamp(depth)):
            store = None
        store = store or KNNStore.load(folder, settings)
        if store.fingerprint != lm.fingerprint or store.saved_stamp != settings.stamp(depth):
            log.warning("kNN store at %s was made by another model or settings: rebuilding",
                        folder)
            store = None
    except StoreError as e:
        if folder.exists() or folder.with_name(folder.name + ".old").exists():
            log.warning("kNN store at %s cannot be trusted (%s): rebuilding", folder, e)
        store = None
    if store is None:
        store = new_store(folder, lm, settings)
    store.settings = settings
    n = len(store)
    common = _common_prefix(store.tokens, ids)
    if common < n:
        store.truncate(common)
    changed = common < n or common < len(ids)
    if common < len(ids):
        start = common
        prefix = ids[max(0, start - settings.overlap):start].tolist()
        index_tokens(lm, store, ids[start:].tolist(), positions=range(start, len(ids)),
                     progress=progress, prefix=prefix)
    if changed or not (folder / "meta.json").exists():
        store.build_index()
        if save:
            store.save(folder)
    store.saved_stamp = settings.stamp(depth)
    return store


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if diff.size else n
