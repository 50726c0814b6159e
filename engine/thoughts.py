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

from .settings import EVERY, parse_every  # noqa: F401 - one parser of a note cadence

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


NOTE_SYSTEM = ("You keep a novelist's notebook. A note says in one plain sentence what "
               "happens in the story: who does what, and why it matters. No praise, no "
               "advice, no talk about the writing.")


def note_messages(passage: str, bible: dict, plan: bool = False) -> list[dict]:
    """The short prompt that asks an instruct model for one note on a passage."""
    ask = ("In one short sentence, say what should happen next in the story, naming the "
           "characters: plan what must not be forgotten." if plan else
           "Summarise the events of this passage in one short sentence, naming the "
           "characters.")
    title = (bible.get("title") or "").strip()
    return [{"role": "system", "content": NOTE_SYSTEM + (f" The novel is '{title}'."
                                                         if title else "")},
            {"role": "user", "content": f"Passage:\n{passage.strip()[-2000:]}\n\n{ask}"}]


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


MIN_NOTE_PIECE = 120  # characters: a line of dialogue needs no note of its own
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)]*$")


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


NOTE_TRIES = 3  # notes asked for before a passage goes without one
_STOP = set("""a an and are as at be but by for from had has have he her hers him his i if in
into is it its me my no not of on or our she so that the their them then there they this to
up us was we were what when where which who will with you your yes oh ah well now here
mr mrs miss dr sir lady lord""".split())
# Capitalised only because they begin a sentence: never taken for a name there.
_STARTERS = set("""outside inside below above behind beyond across through around along under
over after before then when while once now still yet just only perhaps maybe even soon later
today tonight tomorrow yesterday every each all some most many one two three half nobody
everyone everybody somebody someone something nothing everything somewhere nowhere why how
who which whose though although because since until unless as nor also again always never
sometimes instead however suddenly slowly finally there these those one another other such
both either neither let do did does can could would should must may might shall don
twenty thirty forty fifty hundred""".split())
_PLACE_BEFORE = re.compile(r"\b(?:in|at|to|from|of|near|into|across|over|through|toward|towards)\s*$")
_TITLES = {"Mr", "Mrs", "Miss", "Dr", "Sir", "Lady", "Lord", "Captain", "Constable"}
_NAME = re.compile(r"\b[A-Z][a-z]+(?:-[A-Z][a-z]+)?\b")
_REVIEW = re.compile(
    r"^\W*(?:this|the|in this|in the) (?:scene|sentence|passage|paragraph|story|excerpt|"
    r"text|chapter|piece|narrative|novel)\b|\bthe (?:author|writer|reader|narrator|"
    r"protagonist|main character)\b|\bsummar(?:y|i[sz]e)|\bin (?:just |only )?(?:\d+|one|"
    r"two|three) sentences?\b|\b(?:themes?|symboli[sz]e)\b", re.I)


def note_names(paragraph: str) -> list[str]:
    """The characters and places a paragraph names, most mentioned first: capitalised
    words that are not the first word of a sentence (or recur), with a title before
    them kept ("Mr. Bingley")."""
    mentions: dict[str, int] = {}
    inside: dict[str, int] = {}  # mentions that are not a sentence's first word
    titled: dict[str, str] = {}
    places: dict[str, int] = {}
    for m in _NAME.finditer(paragraph):
        word = m.group(0)
        if word.lower() in _STOP or word in _TITLES:
            continue
        before = paragraph[:m.start()].rstrip()
        title = re.search(r"\b(" + "|".join(_TITLES) + r")(\.?)\s*$", paragraph[:m.start()])
        if title:
            titled[word] = f"{title.group(1)}{title.group(2)} {word}"
        first = not before or (before[-1] in ".!?\"“”'’\n:—" and not title)
        mentions[word] = mentions.get(word, 0) + 1
        inside[word] = inside.get(word, 0) + (not first)
        places[word] = places.get(word, 0) + bool(_PLACE_BEFORE.search(before))
    names = [w for w in mentions if inside[w] or mentions[w] >= 2
             or (w.lower() not in _STARTERS and not w.endswith(("ly", "ing", "ed")))]
    # people before places ("in Greyhollow"), then the most mentioned
    names.sort(key=lambda w: (places[w] * 2 >= mentions[w], -mentions[w], -inside[w]))
    return [titled.get(w, w) for w in names]


def _stems(text: str) -> set[str]:
    return {w[:5] for w in re.findall(r"[a-z']+", text.lower())
            if len(w) >= 4 and w not in _STOP}


def note_is_about(note: str, paragraph: str, lead: str = "") -> bool:
    """The note names a character of its paragraph, or two of its events' words. A
    ``lead`` the note was made to start with names nobody: then its events must."""
    body = note[len(lead):] if lead and note.startswith(lead) else note
    names = {n.split()[-1] for n in note_names(paragraph)}
    if not lead and any(re.search(rf"\b{re.escape(n)}\b", body) for n in names):
        return True
    return len(_stems(body) & (_stems(paragraph) - {n.lower()[:5] for n in names})) >= 2


def is_review(note: str) -> bool:
    """An assistant's or a reviewer's voice ("The author has skillfully woven...",
    "This scene...", "Here's the rewritten version")."""
    from .writer import ASSISTANT

    return bool(ASSISTANT.search(note) or _REVIEW.search(note))


def note_problem(note: str, paragraph: str, lead: str = "") -> str | None:
    """Why a note is not worth keeping (None: keep it): empty, an assistant's or a
    reviewer's voice, not about its paragraph, or the paragraph copied out."""
    if len(note.strip()) < 12:
        return "empty"
    if is_review(note):
        return "assistant"
    if not note_is_about(note, paragraph, lead):
        return "not about its paragraph"
    w_note = re.findall(r"\w+", note.lower())
    para = " " + " ".join(re.findall(r"\w+", paragraph.lower())) + " "
    if any(f" {' '.join(w_note[i:i + 12])} " in para for i in range(len(w_note) - 11)):
        return "copied from the paragraph"
    return None


def note_lead(passage: str, plan: bool = False) -> str:
    """The words the note starts with, written for the model: the passage's main
    character, so that the note is about the story and not about the writing."""
    names = note_names(passage)
    return names[0] if names else ""


def write_note(lm, passage: str, bible: dict, plan: bool = False, seed: int = 0,
               cancel=None, tries: int = NOTE_TRIES) -> str:
    """Ask the model for one short note on a passage (or a plan for the next one);
    a note that ``note_problem`` turns down is asked for again with another seed, up
    to ``tries`` times. After that the last one is kept if its only fault is that it
    missed its paragraph; one in an assistant's or reviewer's voice never is ("")."""
    from .writer import PrefixCache, Result, Sampling, stream

    lead = note_lead(passage, plan) or note_lead(bible.get("premise") or "", plan)
    ids = note_prompt_ids(lm.tokenizer, passage, bible, plan, lead=lead)
    prefix = PrefixCache()  # each try re-reads only the tokens after the prompt
    fallback = ""
    for k in range(max(1, tries)):
        result = Result()
        with lm.lock:
            for _ in stream(lm, ids, Sampling(**NOTE_SAMPLING, max_new_tokens=NOTE_TOKENS,
                                              seed=seed + 7919 * k),
                            cancel, prefix, prefix_key="note", result=result):
                pass
        if result.stop_reason == "cancelled":
            return ""
        note = tidy_note(result.text, cut_short=result.stop_reason == "length", lead=lead)
        problem = note_problem(note, passage, lead)
        if problem is None:
            return note
        fallback = note if problem in ("not about its paragraph",
                                       "copied from the paragraph") else ""
    return fallback


def note_prompt_ids(tok, passage: str, bible: dict, plan: bool = False,
                    lead: str = "") -> list[int]:
    """The note prompt as token ids: the chat template, or a plain notebook line;
    ``lead`` starts the note's own text."""
    msgs = note_messages(passage, bible, plan)
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return ids + (list(tok(lead, add_special_tokens=False)["input_ids"]) if lead else [])
    return list(tok(f"{msgs[-1]['content']}\nNote:" + (f" {lead}" if lead else ""),
                    add_special_tokens=False)["input_ids"])


def tidy_note(text: str, cut_short: bool = False, lead: str = "") -> str:
    """A generated note as kept: ``lead`` put back in front, no markers, no label, its
    first paragraph only, ending on a whole sentence when the token limit cut it."""
    note = (lead + strip(text)).strip() if lead else strip(text).strip()
    note = re.sub(r"^\W*(?:note|notebook|notes)\s*:\s*", "", note, flags=re.I)
    note = note.split("\n", 1)[0].strip().strip('"“”')
    if len(note) > 20 and cut_short:
        cut = max(note.rfind(". "), note.rfind(".\n"), note.rfind(".") if note.endswith(".") else -1)
        note = note[:cut + 1] if cut > 20 else note
    return note
