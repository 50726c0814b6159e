"""The kNN store on disk (``KNNStore.save`` and ``KNNStore.load``): an atomic save, a
load that verifies every file against its digest, and tidying what an interrupted
save left. Everything in a store is derived from the manuscript, so one that fails a
check is never trusted: ``StoreError``, and the caller rebuilds it."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KNN_DIR = "knn"


class StoreError(RuntimeError):
    """A store that cannot be trusted (missing, corrupt, foreign): rebuild it."""


def store_folder(project_folder: Path) -> Path:
    return Path(project_folder) / "memory" / KNN_DIR


def save_store(store, folder: Path) -> None:
    """Write ``store`` to ``folder`` atomically: a fresh sibling folder, then a rename
    swap."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays = {"positions": store.positions, "tokens": store.tokens}
    for l in store.layers:
        arrays[f"keys_{l}"], arrays[f"values_{l}"] = store.keys[l], store.values[l]
    digests = {}
    for name, arr in arrays.items():
        path = tmp / f"{name}.npy"
        np.save(path, arr, allow_pickle=False)
        digests[path.name] = _sha256(path)
    # A flat index is a copy of the keys (rebuilt in a blink on load): only the
    # approximate ones, which cost a training pass, are worth their disk space.
    if store._index and not store._index_on_gpu() and store._kind != "flat":
        import faiss
        for (l, h), index in store._index.items():
            path = tmp / f"index_{l}_{h}.faiss"
            faiss.write_index(index, str(path))
            digests[path.name] = _sha256(path)
    meta = store.meta() | {"files": digests, "kind": store._kind}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    _fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_store(cls, folder: Path, settings=None):
    """A ``cls`` (KNNStore) read from ``folder``, every file verified against its
    recorded digest; StoreError if anything does not match."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"no readable meta.json in {folder}: {e}") from e
    if meta.get("version") != FORMAT_VERSION:
        raise StoreError(f"store format {meta.get('version')} is not {FORMAT_VERSION}")
    files = meta.get("files") or {}
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise StoreError(f"{path} is missing or corrupt")
    store = cls(folder, meta["layers"], meta["kv_heads"], meta["head_dim"],
                meta["fingerprint"], settings, meta.get("depth", 0))
    store.saved_stamp = meta.get("stamp")
    try:
        store.positions = np.load(folder / "positions.npy", allow_pickle=False)
        store.tokens = np.load(folder / "tokens.npy", allow_pickle=False)
        for l in store.layers:
            store.keys[l] = np.load(folder / f"keys_{l}.npy", allow_pickle=False)
            store.values[l] = np.load(folder / f"values_{l}.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError) as e:
        raise StoreError(f"cannot read arrays in {folder}: {e}") from e
    n = meta["count"]
    shape = (store.kv_heads, n, store.head_dim)
    if store.positions.shape != (n,) or store.tokens.shape != (n,) or any(
            store.keys[l].shape != shape or store.values[l].shape != shape
            for l in store.layers):
        raise StoreError(f"array shapes in {folder} do not match meta.json")
    kind = meta.get("kind", "flat")
    index_files = [f"index_{l}_{h}.faiss" for l in store.layers
                   for h in range(store.kv_heads)]
    if all(name in files for name in index_files):
        import faiss
        try:
            for l in store.layers:
                for h in range(store.kv_heads):
                    index = faiss.read_index(str(folder / f"index_{l}_{h}.faiss"))
                    if index.ntotal != n or index.d != store.head_dim:
                        raise StoreError("index size does not match the arrays")
                    store._index[(l, h)] = index
            store._kind, store._built_n = kind, n
        except RuntimeError as e:
            raise StoreError(f"unreadable FAISS index in {folder}: {e}") from e
        want = "flat" if n <= store.settings.approx_threshold else store.settings.approx
        if want != kind:
            store._index = {}
    return store


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def clean_stale(folder: Path) -> list[Path]:
    """Tidy what interrupted saves left next to the store ``folder``: remove each
    ``knn.tmp-PID`` folder whose process is gone, and when the store itself is missing
    but ``knn.old`` (the store before a save's swap) is there and no save is under way,
    put it back (it is verified on load like any store). Returns what was removed."""
    folder = Path(folder)
    removed, live = [], False
    for tmp in folder.parent.glob(folder.name + ".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        if _alive(int(pid), tmp):
            live = True
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
        log.warning("removed %s, left by an interrupted save", tmp)
    old = folder.with_name(folder.name + ".old")
    if not live and old.is_dir() and not folder.exists():
        try:
            old.rename(folder)
        except OSError:
            pass
    return removed


def _alive(pid: int, path: Path) -> bool:
    """Whether process ``pid`` (the writer of ``path``) may still be running."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it there: trust only a day's age
        try:
            return time.time() - path.stat().st_mtime < 86400
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True
