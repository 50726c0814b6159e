"""``novel.memories``: the writer's memories (facts, pins, links) and semantic recall over
the whole book. It is one of the novel's memories (see engine/memory/protocol.py): its
reader works on the prompt (recalled blocks), not inside attention."""
from __future__ import annotations

from . import context
from .jobs import NovelError
from .store import validate_text

MAX_MEMORY_CHARS = 4000  # a memory is a fact or a sentence, not a chapter
SYNC_LIMIT = 128         # chunks embedded in line per Continue (~1-2 s on two cores)


class Memories:
    name = "semantic"

    def __init__(self, store, settings, chapters, notes, matrix):
        self._store, self._settings = store, settings
        self._chapters, self._notes, self._matrix = chapters, notes, matrix
        self._semantic = None

    @property
    def semantic(self):
        """This novel's semantic index (engine.memory.semantic), opened on first use."""
        if self._semantic is None:
            from .memory.semantic import SemanticMemory
            self._semantic = SemanticMemory(self._store)
            # A Continue embeds at most this much before recalling; the rest (a whole
            # imported book) is embedded in the background, batch by batch.
            self._semantic.sync_limit = SYNC_LIMIT
        return self._semantic

    # -- the memory protocol ------------------------------------------------------------------
    def settings(self) -> dict:
        return self._settings.get("recall").to_dict()

    def set_settings(self, **changes) -> dict:
        return self._settings.set("recall", **changes).to_dict()

    def info(self) -> dict:
        """{memories, pinned, pending (still to embed, None before the first sync)}; loads
        no embedder."""
        rows = self._store.memories.list()
        return {"memories": len(rows), "pinned": sum(bool(r["pinned"]) for r in rows),
                "pending": self._semantic.pending if self._semantic is not None else None}

    def after_accept(self, chapter_id: int, passage_id: int) -> None:
        """The new passage goes into semantic memory (when recall is on)."""
        from .memory.semantic import SemanticError, embedder_loaded
        # Only when the embedder is already loaded: a first load costs seconds, and the
        # next recall syncs anyway (the index is derived data, synced by signature).
        if self._settings.get("recall").enabled and embedder_loaded():
            try:
                if self.semantic.sync(limit=SYNC_LIMIT).get("pending"):
                    self.semantic.catch_up()
            except SemanticError:
                pass  # recall reports it in the next receipt; the passage itself is saved

    def preparing(self) -> str | None:
        return None

    def reader(self, lm, chapter_id, prompt_ids, receipt):
        return None  # recall reaches the model through the prompt (see recall)

    def rebuild(self, progress=None) -> dict:
        """Re-embed everything and recompute co-occurrences (derived data only)."""
        return self.semantic.rebuild()

    def index(self) -> dict:
        """Embed everything not yet in semantic memory, now."""
        return self.semantic.sync()

    def recall(self, tail: str, budget: int, pinned_keys: set,
               tokenizer=None) -> tuple[list, list[str]]:
        """(hits for the prompt, warnings for the receipt) for a Continue of ``tail``."""
        from .memory.semantic import SemanticError
        settings = self._settings.get("recall")
        if not settings.enabled or not tail.strip() or not self._store.has_recall_sources():
            return [], []  # nothing to recall: do not load the embedder for nothing
        try:
            hits = self.semantic.recall(tail, settings, exclude_text=tail[-budget * 6:],
                                        skip=pinned_keys,
                                        token_budget=int(budget * settings.share),
                                        count_tokens=tokenizer and (
                                            lambda t: len(context.encode(tokenizer, t))))
        except SemanticError as e:
            return [], [f"Semantic recall is off: {e}"]
        if (shown := self._in_book()) is not None:
            hits = [h for h in hits if shown(h.key)]
        if self.semantic.pending:
            return hits, [f"Semantic memory is still indexing ({self.semantic.pending} "
                          "passages or memories to go); recall used what was ready. "
                          "'python -m engine memory rebuild' indexes everything at once."]
        return hits, []

    def _in_book(self):
        """A test on memory keys that is False for a passage or note of a chapter in the
        trash, or a note Undo has hidden (None when there is none of either)."""
        trashed = self._store.passages.trashed_ids()
        hidden = set(self._store.thoughts.ids()) - {t["id"] for t in self._notes.list()}
        if not trashed and not hidden:
            return None

        def shown(key: str) -> bool:
            kind, _, rest = key.partition(":")
            src = rest.split("#")[0]
            if not src.isdigit():
                return True
            gone = trashed if kind == "passage" else hidden if kind == "thought" else ()
            return int(src) not in gone
        return shown

    # -- the writer's memories ------------------------------------------------------------------
    def list(self, query: str | None = None, limit: int = 200) -> list[dict]:
        """All of the writer's memories (pinned first) or, with a query, the best matches
        among memories, passages and thoughts (text matches, then similar)."""
        out = [{"key": f"memory:{r['id']}", "id": r["id"], "kind": r["kind"],
                "pinned": bool(r["pinned"]), "text": r["text"], "source": r["source"],
                "score": None} for r in self._store.memories.list()]
        if not (query or "").strip():
            return out[:limit]
        q = query.strip().lower()
        found = [m for m in out if q in m["text"].lower()]
        by_key = {m["key"]: m for m in out}
        shown = self._in_book() or (lambda k: True)
        for k, score in self.semantic.search(query, limit):
            if any(f["key"] == k for f in found) or not shown(k):
                continue
            if k in by_key:
                found.append({**by_key[k], "score": round(score, 3)})
            elif text := self.semantic.text_of(k):  # None: no longer in the book
                found.append({"key": k, "id": None, "kind": k.split(":")[0], "pinned": False,
                              "text": text, "source": k, "score": round(score, 3)})
        return found[:limit]

    def get(self, memory_id) -> dict:
        """One memory row by id or 'memory:ID' key."""
        ref = str(memory_id).strip()
        if ref.startswith(("passage:", "thought:")):
            raise NovelError(f"{ref} is not one of your memories yet: pin it to keep it.")
        ref = ref.removeprefix("memory:")
        if not ref.isdigit():
            raise NovelError(f"'{memory_id}' is not a memory id.")
        row = self._store.memories.get(int(ref))
        if row is None:
            raise NovelError(f"There is no memory {memory_id}.")
        return row

    def pinned(self) -> list[dict]:
        return self._store.memories.pinned()

    def add(self, text: str, pin: bool = False, kind: str = "fact",
            source: str = "writer") -> int:
        text = validate_text("The memory", (text or "").strip(), MAX_MEMORY_CHARS)
        if not text:
            raise NovelError("The memory is empty; write the fact first.")
        mid = self._store.memories.add(text, kind=kind, pinned=pin, source=source)
        if pin:
            self._matrix.pinned(mid)
        return mid

    def _id(self, ref) -> int:
        """A memory id from an int, 'memory:ID' or a key of a passage/thought (which is
        then kept as a new memory so it can be pinned)."""
        if isinstance(ref, str) and not ref.strip().isdigit():
            from .memory.semantic import parse_key
            kind, src, _ = parse_key(ref)
            if kind == "memory":
                return self.get(src)["id"]
            text = self.semantic.text_of(ref)
            if not text:
                raise NovelError(f"There is no {ref}.")
            return self.add(text, kind=kind, source=ref)
        return self.get(ref)["id"]

    def pin(self, ref) -> int:
        """Pin a memory (or a recalled passage/thought, kept as a memory): always in context
        and, when the memory matrix is on, held in matrix slots that never change."""
        mid = self._id(ref)
        self._store.memories.update(mid, pinned=True)
        self._matrix.pinned(mid)
        return mid

    def unpin(self, ref) -> int:
        mid = self.get(ref)["id"]
        self._store.memories.update(mid, pinned=False)
        self._matrix.unpin(mid)
        return mid

    def edit(self, memory_id, text: str) -> None:
        text = validate_text("The memory", (text or "").strip(), MAX_MEMORY_CHARS)
        if not text:
            raise NovelError("A memory cannot be empty; delete it instead.")
        self._store.memories.update(self.get(memory_id)["id"], text=text)

    def delete(self, memory_id) -> None:
        self._store.memories.delete(self.get(memory_id)["id"])  # with its associations

    def pin_sentence(self, text: str, chapter_id: int | None = None,
                     thought_id: int | None = None) -> int:
        """Pin a sentence of the manuscript (or of a thought) as written there."""
        text = (text or "").strip()
        if thought_id is not None:
            row = self._store.thoughts.get(thought_id)
            if row is None:
                raise NovelError(f"There is no thought {thought_id}.")
            text = text or row["text"].strip()
            where, kind, source = row["text"], "thought", f"thought:{thought_id}"
        else:
            cid = chapter_id if chapter_id is not None else self._chapters.id()
            where, kind, source = self._chapters.text(cid), "manuscript", f"chapter:{cid}"
        if not text:
            raise NovelError("Select the sentence to pin first.")
        if text not in where:
            raise NovelError("That text is not in the " + ("thought." if thought_id is not None
                                                          else "chapter."))
        same = self._store.memories.find(text)
        if same is not None:
            return self.pin(same)
        return self.add(text, pin=True, kind=kind, source=source)

    def link(self, a, b) -> None:
        """The writer's explicit association between two memories (ids or keys)."""
        from .memory.semantic import SemanticError
        ka, kb = (f"memory:{int(x)}" if str(x).strip().isdigit() else str(x).strip()
                  for x in (a, b))
        try:
            self.semantic.link(ka, kb)
        except SemanticError as e:
            raise NovelError(str(e)) from e
