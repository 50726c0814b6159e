"""The memory matrix of one novel: its setting, its file kept in step with the
manuscript, pins, and the memory tokens a Continue reads.

* Setting: ``novel.settings.get('matrix')`` (on, layer, slots, rows, adapter) and
  ``settings['matrix_pins']`` ({memory id: slots}); the writer's data lives in the db.
* File: ``<project>/memory/matrix.safetensors`` is derived data, stamped with the model
  fingerprint and the write settings, and holding the list of segments written, so
  the matrix and its record are one atomic file (an older layout kept the list in
  ``matrix.json``, and a crash between the two left them apart). A missing, corrupt,
  foreign or NaN file, or one whose segment list does not match its writes, is
  rebuilt from the manuscript (never trusted blindly); the reason is kept in ``notice``.
* Writes: each chapter's tokens are cut into segments of ``SEGMENT`` tokens; every
  full segment is written once, in book order. The file records the segments it holds
  (digests): when the manuscript only grew, the new segments are written; when older
  text changed, the matrix is rebuilt (a gated write cannot be undone), and pins are
  re-applied afterwards to the slots that recognise the pinned memory most.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from dataclasses import replace

from ..context import encode
from ..settings import SettingsError
from .matrix import MatrixError, MatrixSettings, MemoryMatrix
from .matrix_model import SEGMENT, depth as _depth, read_tokens, write_segments
from .protocol import Reader

PINS = "matrix_pins"
PIN_SLOTS = 4  # slots pinned per pinned memory


class ProjectMatrix:
    """``novel.matrix``: one novel's memory matrix (a Memory, see protocol.py)."""
    name = "matrix"

    def __init__(self, novel):
        self.novel = novel
        self._mm: MemoryMatrix | None = None
        self._segments: list[str] = []
        self._adapter = None
        self._lock = threading.RLock()
        self.notice = ""  # why the matrix was last rebuilt (or read without its adapter)
        self._told = ""   # the notice a Continue already reported

    # -- settings --------------------------------------------------------------------
    def choice(self):
        """What the writer chose (engine.settings.Matrix: on, layer, slots, rows, adapter)."""
        return self.novel.settings.get("matrix")

    def write_settings(self) -> MatrixSettings:
        """How the matrix is written and read: the writer's choice over the defaults."""
        c = self.choice()
        return MatrixSettings(layer=c.layer, slots=c.slots, rows=c.rows)

    def settings(self) -> dict:
        """{on, layer (resolved), slots, rows, adapter, depth}."""
        d = self.choice().to_dict()
        depth = self._depth()
        d["layer"] = self.write_settings().resolved_layer(depth) if depth else d["layer"]
        d["depth"] = depth
        return d

    def set_settings(self, on: bool | None = None, layer=None, slots=None, rows=None,
                     adapter=None) -> dict:
        """Checked in full before saving (a layer past the model's depth, an adapter that
        does not fit it: SettingsError / MatrixError, nothing saved)."""
        layer = None if layer is None or str(layer).strip() == "" else layer
        c = self.choice().changed(on=on, layer=layer, slots=slots, rows=rows)
        if adapter is not None:
            c = replace(c, adapter=str(adapter).strip() or None)
        depth = self._depth()
        if c.layer is not None and depth and not c.layer < depth:
            raise SettingsError(f"The matrix layer must lie in 0..{depth - 1} for this model.")
        if adapter is not None and c.adapter:
            from .matrix_adapter import load_adapter
            load_adapter(c.adapter, self.novel.model.get(timeout=0))  # raises clearly
        self.novel.settings.put(c)
        self._adapter = None
        return self.settings()

    def preparing(self) -> str | None:
        return "Updating the memory matrix…" if self.choice().on else None

    def _depth(self) -> int:
        from ..models import model_shape
        try:
            return model_shape(self.novel.model.get(timeout=0))[0]
        except Exception:  # noqa: BLE001 - model still loading
            return 0

    # -- the matrix -------------------------------------------------------------------
    def path(self) -> Path:
        return Path(self.novel.folder) / "memory" / "matrix.safetensors"

    def _stamp(self, lm) -> dict:
        from ..models import model_shape
        return {"model": lm.fingerprint, "segment": SEGMENT,
                **self.write_settings().write_stamp(model_shape(lm)[0])}

    def segments(self, lm) -> list[tuple[int, list[int], str]]:
        """(chapter position, token ids, digest) of every full segment, in book order."""
        out = []
        for c in self.novel.store.chapters():
            text = (c["text"] or "").strip()
            ids = encode(lm.tokenizer, text)
            for a in range(0, len(ids) - SEGMENT + 1, SEGMENT):
                seg = ids[a:a + SEGMENT]
                h = hashlib.sha1(np.asarray(seg, np.int64).tobytes()).hexdigest()[:16]
                out.append((int(c["position"]), seg, h))
        return out

    def matrix(self, progress=None) -> MemoryMatrix:
        """The matrix, in step with the manuscript (writing or rebuilding as needed).
        ``progress``: callable(done, total) or None. Takes the model lock."""
        lm = self.novel.model.get()
        with self._lock, lm.lock:
            stamp = self._stamp(lm)
            mm = self._mm if self._mm is not None and self._mm.stamp == stamp else None
            if mm is None:
                mm, self._segments = self._load(stamp)
            segs = self.segments(lm)
            digests = [h for _, _, h in segs]
            if digests[:len(self._segments)] != self._segments:
                self.notice = "The manuscript changed before the last write: matrix rebuilt."
                mm, self._segments = self._fresh(lm, stamp), []
            todo = segs[len(self._segments):]
            prev_ids = segs[len(self._segments) - 1][1] if self._segments else []
            write_segments(lm, mm, [(c, seg) for c, seg, _ in todo], prev_ids, progress)
            self._segments += [h for _, _, h in todo]
            if todo or self._mm is not mm:
                if todo and len(self._segments) == len(todo):
                    self._repin(lm, mm)
                self._save(mm)
            self._mm = mm
            return mm

    def _fresh(self, lm, stamp) -> MemoryMatrix:
        return MemoryMatrix(lm.model.config.hidden_size, self.write_settings(), stamp)

    def _load(self, stamp):
        p = self.path()
        lm = self.novel.model.get()
        if not p.exists():
            return self._fresh(lm, stamp), []
        try:
            mm = MemoryMatrix.load(p, stamp)
            if mm.extra is not None:
                segs = mm.extra["segments"]
            else:  # the older two-file layout
                segs = json.loads(self._legacy().read_text())["segments"]
            if not isinstance(segs, list):
                raise ValueError("its segment list is not a list")
            written = int((mm.chapters >= 0).sum())  # pins write with chapter -1
            if written != len(segs):
                raise ValueError(f"it holds {written} segment writes but records "
                                 f"{len(segs)}; an interrupted save")
            return mm, list(segs)
        except (MatrixError, OSError, ValueError, KeyError, TypeError) as e:
            self.notice = f"The memory matrix file was not usable ({e}); rebuilt from the manuscript."
            return self._fresh(lm, stamp), []

    def _legacy(self) -> Path:
        return self.path().with_suffix(".json")

    def _save(self, mm: MemoryMatrix) -> None:
        mm.save(self.path(), extra={"segments": self._segments})
        self._legacy().unlink(missing_ok=True)

    def reset(self, progress=None) -> dict:
        """Start M again from its seed: forget everything written; pinned memories are
        written and pinned again. Returns info()."""
        self.novel.desk.idle_or_fail()
        with self._lock:
            self._mm, self._segments = None, []
            for f in (self.path(), self._legacy()):
                f.unlink(missing_ok=True)
            self.notice = ""
            self.matrix(progress)
            return self.info()

    rebuild = reset  # the protocol's name: the matrix is rebuilt from the book

    # -- pins -------------------------------------------------------------------------
    def pins(self) -> dict[str, list[int]]:
        """{memory id: [slots]}."""
        return self.novel.store.get_setting(PINS) or {}

    def pin(self, ref) -> list[int]:
        """Write a memory (id or key) into the matrix and pin the slots that hold it most;
        returns them."""
        m = self.novel.memories.get(ref)
        memory_id, text = m["id"], m["text"]
        mm = self.matrix()
        lm = self.novel.model.get()
        with self._lock, lm.lock:
            slots = self._pin_text(lm, mm, text)
            pins = self.pins()
            pins[str(memory_id)] = slots
            self.novel.store.set_setting(PINS, pins)
            self._save(mm)
        return slots

    def _pin_text(self, lm, mm, text) -> list[int]:
        from .attention import layer_states
        ids = encode(lm.tokenizer, text)
        states = layer_states(lm, mm.settings.resolved_layer(_depth(lm)), ids)
        mm.write(states, chapter=-1)  # a pin's write: not a chapter's (the plot skips it)
        free = [s for s in mm.strongest(states, mm.settings.slots) if not mm.pinned[s]]
        slots = free[:PIN_SLOTS]
        mm.set_pinned(slots, True)
        return slots

    def pinned(self, memory_id: int) -> None:
        """A memory the writer pinned: held in the matrix too while it is on."""
        if self.choice().on:
            self.pin(memory_id)

    def unpin(self, ref) -> None:
        memory_id = self.novel.memories.get(ref)["id"]
        pins = self.pins()
        slots = pins.pop(str(memory_id), None)
        if slots is None:
            return
        self.novel.store.set_setting(PINS, pins)
        with self._lock:
            if self._mm is not None:
                self._mm.set_pinned(slots, False)
                self._save(self._mm)

    def _repin(self, lm, mm) -> None:
        """After a rebuild: pin each pinned memory again (its text, re-derived)."""
        pins = self.pins()
        for mid in list(pins):
            row = self.novel.store.memories.get(int(mid))
            if row:
                pins[mid] = self._pin_text(lm, mm, row["text"])
            else:
                pins.pop(mid)
        self.novel.store.set_setting(PINS, pins)

    # -- what the UI shows ------------------------------------------------------------
    def info(self) -> dict:
        mm = self._mm
        if mm is None:
            return {"loaded": False, "writes": 0, "segments": 0, "slots": self.choice().slots,
                    "pinned": sum(len(v) for v in self.pins().values()), "notice": self.notice}
        return {"loaded": True, "writes": mm.writes, "segments": len(self._segments),
                "slots": mm.settings.slots,
                "pinned": int(mm.pinned.sum()), "tokens": mm.tokens,
                "bytes": self.path().stat().st_size if self.path().exists() else 0,
                "notice": self.notice}

    def usage(self, progress=None) -> dict:
        """Gate mass per slot group per chapter, row strength and pins (for the plot),
        after bringing M up to date (``progress`` as in ``matrix``)."""
        mm = self.matrix(progress)
        from .matrix import BUCKETS
        chapters = sorted(c for c in set(mm.chapters.tolist()) if c >= 0)
        grid = np.zeros((BUCKETS, len(chapters)), np.float32)
        for j, c in enumerate(chapters):
            grid[:, j] = mm.usage[mm.chapters == c].sum(0)
        init = MemoryMatrix(mm.d, mm.settings).M  # the seeded start: drift = strength
        drift = 1.0 - (mm.M * init).sum(1)
        per = mm.settings.slots // BUCKETS
        return {"chapters": chapters, "usage": grid.tolist(),
                "strength": drift.reshape(BUCKETS, per).mean(1).tolist(),
                "pinned": mm.pinned.reshape(BUCKETS, per).sum(1).tolist(),
                "per_bucket": per}

    # -- hooks ------------------------------------------------------------------------
    def after_accept(self, chapter_id, passage_id) -> None:
        if self.choice().on:
            self.matrix()

    def reader(self, lm, chapter_id=None, prompt_ids=None, receipt: dict | None = None):
        """Its part in a Continue (None when off or empty). Outside the lock. Says in
        ``receipt['inside']`` what the model will read."""
        if not self.choice().on:
            return None
        mm = self.matrix()
        if mm.writes == 0:
            notice = self.new_notice()  # e.g. rebuilt
            return Reader(warnings=[notice] if notice else [])
        tokens = self.tokens(lm, mm)
        notice = self.new_notice()  # e.g. rebuilt, or its adapter unusable
        if receipt is not None:
            rows = sum(int(t.keys.shape[-2]) for t in tokens.values())
            receipt.setdefault("inside", []).append(
                f"Memory matrix: {rows} memory tokens at layer "
                f"{', '.join(str(x) for x in sorted(tokens))} summarising {mm.writes} writes"
                f" ({int(mm.pinned.sum())} of {mm.settings.slots} slots pinned)")
        key = ("matrix", mm.writes, int(mm.pinned.sum()), self.choice().adapter,
               float(np.abs(mm.M).sum()))
        from .attention import matrix_tokens
        return Reader(lambda: matrix_tokens(lm, tokens), key, [notice] if notice else [])

    def tokens(self, lm, mm: MemoryMatrix) -> dict:
        return read_tokens(lm, mm, self._load_adapter(lm))

    def _load_adapter(self, lm):
        """The trained read path, or None (CountSketch) with a notice when it is unusable."""
        path = self.choice().adapter
        if not path:
            return None
        if self._adapter is None:
            from .matrix_adapter import load_adapter
            try:
                self._adapter = load_adapter(path, lm)
            except MatrixError as e:
                self.notice = f"The trained memory read path is unusable ({e}); reading " \
                              "the matrix through its CountSketch instead."
                return None
        return self._adapter

    def new_notice(self) -> str:
        """The notice, once: what a Continue should tell the writer."""
        if self.notice and self.notice != self._told:
            self._told = self.notice
            return self.notice
        return ""

