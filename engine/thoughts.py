"""Thought bubbles: the model's inline self-commentary, kept out of the manuscript.

In the model's context a thought stands between BEGIN and END. Neither character
occurs in ordinary prose; if a writer types one anyway, ``escape_prose`` turns it into
a look-alike so it can never open or close a thought. The streaming ``Router`` sends
marker-delimited text to the monologue, never to the page, and tolerates a model
that forgets to close (or opens nothing and closes anyway).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

BEGIN, END = "⟦", "⟧"
_ESCAPES = {BEGIN: "[[", END: "]]"}
NOTE_TOKENS = 48
NOTE_SAMPLING = {"temperature": 0.3, "top_p": 0.9}  # notes: focused, a little varied


def escape_prose(text: str) -> str:
    """Prose safe to put in the model's context: no marker survives."""
    for mark, look_alike in _ESCAPES.items():
        text = text.replace(mark, look_alike)
    return text


def inline(note: str) -> str:
    """A thought as the model reads it in context."""
    return f"{BEGIN}{escape_prose(note.strip())}{END}"


@dataclass
class Thought:
    anchor: int      # offset in the prose where the thought stands
    text: str


@dataclass
class Router:
    """Feed streamed text; prose and thoughts come out separately.

    ``feed`` returns the prose to show; finished thoughts collect in ``thoughts``
    anchored at the prose offset where they began.
    """
    prose: str = ""
    thoughts: list[Thought] = field(default_factory=list)
    _open: list[str] | None = None
    _anchor: int = 0

    @property
    def thinking(self) -> bool:
        return self._open is not None

    def feed(self, delta: str) -> str:
        shown = []
        for ch in delta:
            if ch == BEGIN:
                if self._open is None:
                    self._open, self._anchor = [], len(self.prose) + len("".join(shown))
                # a second BEGIN inside a thought is noise: drop it
            elif ch == END:
                if self._open is not None:
                    self._close()
                # an END with nothing open is dropped, never shown
            elif self._open is not None:
                self._open.append(ch)
            else:
                shown.append(ch)
        out = "".join(shown)
        self.prose += out
        return out

    def finish(self) -> None:
        """End of generation: an unclosed thought ends here."""
        if self._open is not None:
            self._close()

    def _close(self) -> None:
        text = "".join(self._open).strip()
        if text:
            self.thoughts.append(Thought(self._anchor, text))
        self._open = None


def split(text: str) -> tuple[str, list[Thought]]:
    """Prose and thoughts of a whole text (the streaming Router, in one go)."""
    r = Router()
    r.feed(text)
    r.finish()
    return r.prose, r.thoughts


def strip(text: str) -> str:
    """The manuscript view: every thought removed."""
    return split(text)[0]


def with_thoughts(prose: str, thoughts: list[Thought]) -> str:
    """Prose with its thoughts put back inline at their anchors (for the model)."""
    out, last = [], 0
    for t in sorted(thoughts, key=lambda t: t.anchor):
        a = max(last, min(t.anchor, len(prose)))
        out += [escape_prose(prose[last:a]), inline(t.text)]
        last = a
    out.append(escape_prose(prose[last:]))
    return "".join(out)


def reanchor(old: str, new: str, anchor: int) -> int:
    """Where an anchor in ``old`` lands after the writer edited it into ``new``.

    Text around the anchor that survived the edit keeps the anchor beside it; an
    anchor inside a replaced stretch moves to the end of the replacement.
    """
    pre = 0
    limit = min(len(old), len(new))
    while pre < limit and old[pre] == new[pre]:
        pre += 1
    suf = 0
    while suf < limit - pre and old[-1 - suf] == new[-1 - suf]:
        suf += 1
    if anchor <= pre:
        return anchor
    if anchor >= len(old) - suf:
        return anchor + len(new) - len(old)
    # Only the changed middle needs a real diff (typing touches a few characters).
    mid_old, mid_new = old[pre:len(old) - suf], new[pre:len(new) - suf]
    return pre + _reanchor_diff(mid_old, mid_new, anchor - pre)


def _reanchor_diff(old: str, new: str, anchor: int) -> int:
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new,
                                                       autojunk=False).get_opcodes():
        if tag == "insert" and i1 == anchor:
            return j1  # new text right after the anchor: the note stays with what preceded
        if i1 <= anchor < i2:
            return j1 + (anchor - i1) if tag == "equal" else j2
    return len(new)


def note_messages(passage: str, bible: dict, plan: bool = False) -> list[dict]:
    """The short prompt that asks an instruct model for one note on a passage."""
    ask = ("In one or two sentences, plan what should happen next in this story, "
           "and what must not be forgotten." if plan else
           "In one or two sentences, note what just happened in this passage, what "
           "must be remembered, and what should come next.")
    return [{"role": "system", "content": "You are a novelist's private notebook. "
                                          f"The novel is '{bible.get('title', '')}'."},
            {"role": "user", "content": f"{passage.strip()[-2000:]}\n\n{ask}"}]


class ThoughtBook:
    """A novel's thoughts in novel.db: anchored per chapter, with their edit history.

    A thought belongs to the revision it was made on: it is shown while that revision is
    the chapter's head or one of the head's ancestors, so Undo hides the notes of what it
    undid and Redo brings them back (the writer's later edits are descendants)."""

    def __init__(self, store):
        self.store = store

    def list(self, chapter_id: int | None = None) -> list[dict]:
        """The thoughts shown now, of one chapter or of every live one."""
        return self.store.thoughts.list(chapter_id)

    def get(self, thought_id: int) -> dict:
        row = self.store.thoughts.get(thought_id)
        if row is None:
            from .store import ProjectError
            raise ProjectError(f"There is no thought {thought_id}.")
        return row

    def add(self, chapter_id: int, anchor: int, text: str, passage_id: int | None = None,
            author: str = "writer", revision_id: int | None = None) -> int:
        """A thought on ``revision_id`` (default: its passage's revision, else the
        chapter's head), anchored in that revision's text."""
        from .store import ProjectError, validate_text
        text = validate_text("The thought", (text or "").strip(), 5_000)
        if not text:
            raise ProjectError("The thought is empty.")
        if revision_id is None and passage_id is not None:
            row = self.store.passages.get(passage_id)
            revision_id = row["revision_id"] if row else None
        if revision_id is None:
            revision_id = self.store.chapter(chapter_id)["head_rev"]
        length = len(self.store.revision(revision_id)["text"] or "")
        return self.store.thoughts.add(chapter_id, revision_id,
                                       max(0, min(int(anchor), length)), text,
                                       passage_id=passage_id, author=author)

    def edit(self, thought_id: int, text: str) -> None:
        from .store import ProjectError, validate_text
        text = validate_text("The thought", (text or "").strip(), 5_000)
        if not text:
            raise ProjectError("The thought is empty; delete it instead.")
        self.get(thought_id)
        self.store.thoughts.edit(thought_id, text, author="writer")

    def delete(self, thought_id: int) -> None:
        self.get(thought_id)
        self.store.thoughts.delete(thought_id)

    def history(self, thought_id: int) -> list[dict]:
        return self.store.thoughts.history(thought_id)

    def follow_edit(self, chapter_id: int, old: str, new: str) -> None:
        """Move the chapter's anchors along with the writer's edit of its text."""
        rows = self.list(chapter_id)
        if not rows or old == new:
            return
        self.store.thoughts.set_anchors({r["id"]: reanchor(old, new, r["anchor"])
                                         for r in rows})

    def inline_tail(self, chapter_id: int, prose: str, recent: int | None = 3) -> str:
        """The chapter text as the model reads it: its last ``recent`` thoughts inline
        (None: all of them, as the kNN memory holds the chapter)."""
        rows = [r for r in self.list(chapter_id) if r["anchor"] <= len(prose)]
        rows = rows[-recent:] if recent is not None else rows
        return with_thoughts(prose, [Thought(r["anchor"], r["text"]) for r in rows])

    def margin_markdown(self, prose: str, chapter_id: int) -> str:
        """Prose with each thought set apart as a margin note after its paragraph."""
        out, last = [], 0
        for r in self.list(chapter_id):
            a = max(last, min(r["anchor"], len(prose)))
            end = prose.find("\n", a)
            end = len(prose) if end < 0 else end
            out.append(prose[last:end])
            out.append(f"\n\n> *Margin note:* {r['text']}\n")
            last = end
        out.append(prose[last:])
        return "".join(out)


EVERY = ("passage", "paragraph")  # or a whole number of tokens (see note_points)
MIN_NOTE_PIECE = 120  # characters: a line of dialogue needs no note of its own
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)]*$")


def parse_every(value) -> str | int:
    """'passage' | 'paragraph' | N tokens (16..4096) from a setting, a flag or the UI."""
    v = str(value).strip().lower()
    if v in EVERY:
        return v
    if v.isdigit() and 16 <= int(v) <= 4096:
        return int(v)
    raise ValueError(f"A note goes after each passage, each paragraph, or every N tokens "
                     f"(16 to 4,096), not '{value}'.")


def note_points(text: str, every, tokenizer=None) -> list[int]:
    """Where the notes on a freshly written ``text`` go (offsets into it, each closing the
    piece of text its note is about): its end ('passage'); the end of each paragraph
    (each line: 'paragraph'); or the first sentence end after each run of N tokens (N). A piece too
    short to say anything about joins the next one."""
    end, prose_end = len(text), len(text.rstrip())
    if prose_end == 0:
        return []
    if every == "paragraph":
        # a line break is a new paragraph on the page (models rarely leave a blank line)
        cuts = [m.start() for m in re.finditer(r"\n\s*", text) if m.start() < prose_end]
    elif isinstance(every, int):
        offsets = tokenizer(text, add_special_tokens=False,
                            return_offsets_mapping=True)["offset_mapping"]
        cuts, next_at = [], every
        for i, (_, b) in enumerate(offsets):
            if (i + 1 >= next_at and b < prose_end and text[b].isspace()
                    and _SENTENCE_END.search(text[max(0, b - 4):b])):
                cuts.append(b)
                next_at = i + 1 + every
    else:
        cuts = []
    points, last = [], 0
    for c in [*cuts, end]:
        if len(text[last:c].strip()) >= MIN_NOTE_PIECE or c == end:
            if points and len(text[last:c].strip()) < MIN_NOTE_PIECE:
                points[-1] = c  # a short last piece belongs to the note before it
            else:
                points.append(c)
            last = c
    return points


def write_note(lm, passage: str, bible: dict, plan: bool = False, seed: int = 0,
               cancel=None) -> str:
    """Ask the model for one short note on a passage (or a plan for the next one)."""
    from .writer import Result, Sampling, stream

    ids = note_prompt_ids(lm.tokenizer, passage, bible, plan)
    result = Result()
    with lm.lock:
        for _ in stream(lm, ids, Sampling(**NOTE_SAMPLING, max_new_tokens=NOTE_TOKENS,
                                          seed=seed),
                        cancel, result=result):
            pass
    return tidy_note(result.text, cut_short=result.stop_reason == "length")


def note_prompt_ids(tok, passage: str, bible: dict, plan: bool = False) -> list[int]:
    """The note prompt as token ids: the chat template, or a plain notebook line."""
    msgs = note_messages(passage, bible, plan)
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return list(tok(f"{msgs[-1]['content']}\nNote:", add_special_tokens=False)["input_ids"])


def tidy_note(text: str, cut_short: bool = False) -> str:
    """A generated note as kept: no markers, and ending on a whole sentence when the
    token limit cut it short."""
    note = strip(text).strip()
    if len(note) > 20 and cut_short:
        cut = max(note.rfind(". "), note.rfind(".\n"))
        note = note[:cut + 1] if cut > 20 else note
    return note
