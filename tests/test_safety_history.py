"""Issue 13, the history side: the trash, versions (every child reachable), notes that
follow Undo, stale saves kept as a branch, and an empty passage dropped only when safe."""
from __future__ import annotations

import pytest

from engine import writer
from engine_helpers import fake_stream
from engine.novel import Novel, NovelError, StaleText
from engine.thoughts import BEGIN, END
from engine.writer import Sampling


def run(gen):
    events = list(gen)
    return events[-1]


# -- 1. delete is a soft delete into a trash ------------------------------------------
def test_delete_moves_the_chapter_to_the_trash_and_restore_brings_it_back(novel):
    a = novel.add_chapter("One", "alpha beta")
    b = novel.add_chapter("Two", "gamma")
    c = novel.add_chapter("Three", "delta epsilon zeta")
    novel.delete_chapter(b)
    assert [ch["id"] for ch in novel.chapters()] == [a, c]
    assert [ch["position"] for ch in novel.chapters()] == [1, 2]
    assert novel.chapter_id(2) == c and novel.chapter_id() == c  # numbering skips it
    assert "gamma" not in novel.export("md") and "gamma" not in novel.manuscript()
    novel.delete_chapter(a)
    trash = novel.trash()
    assert [t["id"] for t in trash] == [a, b]  # newest deletion first
    assert trash[1]["title"] == "Two" and trash[1]["words"] == 1
    assert trash[0]["deleted"] >= trash[1]["deleted"] > 0
    assert set(trash[0]) == {"id", "title", "words", "deleted"}
    # a chapter added now is numbered among the live ones only
    d = novel.add_chapter("")
    assert novel.chapters()[-1]["title"] == "Chapter 2"
    assert novel.restore_chapter(b) == b
    assert [ch["id"] for ch in novel.chapters()] == [c, b, d]  # its old position 2
    assert novel.text(b) == "gamma" and [t["id"] for t in novel.trash()] == [a]
    with pytest.raises(NovelError, match="not in the trash"):
        novel.restore_chapter(b)
    with pytest.raises(NovelError, match="not in the trash"):
        novel.restore_chapter(9999)


def test_trashed_chapter_keeps_its_history_and_notes(novel):
    cid = novel.add_chapter("One", "Start.")
    novel.save_text(cid, "Start. More.")
    novel.set_thought_settings(on=False)
    novel.add_thought(cid, "a note")
    novel.delete_chapter(cid)
    assert novel.list_thoughts() == [] and novel.chapters() == []
    with pytest.raises(NovelError, match="trash"):
        next(novel.continue_chapter(cid))
    novel.restore_chapter(cid)
    assert [t["text"] for t in novel.list_thoughts()] == ["a note"]
    assert novel.undo(cid) == "Start."


# -- 2. versions: every child of the head's parent is reachable -------------------------
def test_stopped_passage_is_reachable_after_retry_and_undo(novel, monkeypatch):
    cid = novel.add_chapter("One", "Opening.")
    novel.set_thought_settings(on=False)
    parent = novel.head(cid)
    assert novel.versions(cid) == []  # the first revision has no alternatives
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=400, seed=1))
    for ev in gen:  # Continue, then Stop mid-stream
        if ev.delta:
            novel.stop()
    stopped = novel.text(cid)
    assert ev.status == "Stopped." and stopped != "Opening."
    first = novel.head(cid)
    monkeypatch.setattr(writer, "stream", fake_stream([" The retried passage."]))
    again = run(novel.retry(cid))
    assert again.text == "Opening. The retried passage."
    assert novel.undo(cid) == "Opening."
    assert novel.redo(cid) == again.text
    vs = novel.versions(cid)
    assert [v["id"] for v in vs] == [first, novel.head(cid)]  # oldest first
    assert [v["current"] for v in vs] == [False, True]
    assert vs[1]["preview"] == "The retried passage." and vs[1]["action"] == "retry"
    assert vs[0]["preview"] and vs[0]["preview"] in " ".join(stopped.split()) + "…"
    assert {"id", "author", "action", "created", "words", "preview",
            "current"} <= set(vs[0])
    assert novel.switch_version(cid, first) == stopped
    assert novel.head(cid) == first and novel.versions(cid)[0]["current"]
    # Redo returns to the version last shown, not merely the newest one
    novel.undo(cid)
    assert novel.head(cid) == parent
    assert novel.redo(cid) == stopped


def test_switch_version_refuses_other_chapters_and_a_busy_model(novel):
    a = novel.add_chapter("One", "Opening.")
    b = novel.add_chapter("Two", "Elsewhere.")
    with pytest.raises(NovelError, match="not a version"):
        novel.switch_version(a, novel.head(b))
    assert novel.text(a) == "Opening."
    gen = novel.continue_chapter(a, Sampling(max_new_tokens=50, seed=1))
    next(gen)
    with pytest.raises(NovelError, match="press Stop"):
        novel.switch_version(a, novel.head(a))
    novel.stop()
    list(gen)


# -- 3. notes follow Undo --------------------------------------------------------------
def test_notes_belong_to_their_revision_undo_hides_redo_restores(novel, monkeypatch):
    import engine.novel as novel_mod

    cid = novel.add_chapter("One", "The keeper")
    novel.save_text(cid, "The keeper climbed the stairs.")
    monkeypatch.setattr(writer, "stream", fake_stream([" He lit the lamp."]))
    monkeypatch.setattr(novel_mod, "write_note",
                        lambda lm, passage, bible, plan=False, seed=0, cancel=None: "lamp lit")
    novel.set_thought_settings(every="passage")
    mine = novel.add_thought(cid, "the stairs matter")  # tied to the head of now
    run(novel.continue_chapter(cid))
    assert [t["text"] for t in novel.list_thoughts(cid)] == ["the stairs matter", "lamp lit"]
    novel.undo(cid)
    assert [t["text"] for t in novel.list_thoughts(cid)] == ["the stairs matter"]
    assert "lamp lit" not in novel.thoughts.inline_tail(cid, novel.text(cid), None)
    assert "lamp lit" not in novel.export_with_notes()
    assert "lamp lit" not in novel.build_context(cid)[1]["blocks"][-1]["text"]
    novel.undo(cid)  # before the writer's edit the note was made on: it goes too
    assert novel.list_thoughts(cid) == [] and novel.list_thoughts() == []
    novel.redo(cid)
    novel.redo(cid)
    assert [t["text"] for t in novel.list_thoughts(cid)] == ["the stairs matter", "lamp lit"]
    assert "lamp lit" in novel.export_with_notes()
    # the writer's later edits are descendants: the notes stay, anchors follow
    novel.save_text(cid, "At dusk, " + novel.text(cid))
    assert len(novel.list_thoughts(cid)) == 2
    assert novel.thoughts.get(mine)["anchor"] == len("At dusk, The keeper climbed the stairs.")


def test_migration_ties_old_notes_to_their_passage_or_the_head(novel, slot, monkeypatch):
    from engine.store import Store

    cid = novel.add_chapter("One", "Start.")
    novel.set_thought_settings(on=False)
    monkeypatch.setattr(writer, "stream", fake_stream([f" Run.{BEGIN}fear{END}"]))
    run(novel.continue_chapter(cid))
    passage_rev = novel.head(cid)
    novel.save_text(cid, novel.text(cid) + " Then rest.")
    tid = novel.add_thought(cid, "writer's")
    folder = novel.folder
    novel.close()
    db = Store.open(folder).db  # back to schema 3: the columns of migration 4 dropped
    for table, col in (("thoughts", "revision_id"), ("chapters", "deleted"),
                       ("revisions", "visited")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    db.execute("DROP INDEX IF EXISTS revisions_parent")
    db.execute("PRAGMA user_version=3")
    db.conn.close()
    again = Novel.open(folder, slot)
    rows = {r["text"]: r["revision_id"] for r in again.list_thoughts(cid)}
    assert rows == {"fear": passage_rev, "writer's": again.head(cid)}
    assert again.thoughts.get(tid)["revision_id"] == again.head(cid)
    again.undo(cid)
    assert [t["text"] for t in again.list_thoughts(cid)] == ["fear"]
    again.close()


# -- 7. a stale tab never overwrites a newer passage ------------------------------------
def test_stale_save_is_kept_as_another_version_and_the_head_stays(novel, monkeypatch):
    cid = novel.add_chapter("One", "Opening.")
    novel.set_thought_settings(on=False)
    loaded = novel.head(cid)  # a tab loads the chapter here
    monkeypatch.setattr(writer, "stream", fake_stream([" The model's newer passage."]))
    newer = run(novel.continue_chapter(cid)).text  # written from another tab
    head = novel.head(cid)
    with pytest.raises(StaleText) as err:
        novel.save_text(cid, "Opening. The stale tab's typing.", base_rev=loaded)
    assert isinstance(err.value, NovelError)
    assert err.value.head == head and "Other versions" in str(err.value)
    assert novel.text(cid) == newer and novel.head(cid) == head  # nothing overwritten
    branch = novel.store.revision(err.value.saved)
    assert branch["parent_id"] == loaded and branch["author"] == "writer"
    assert err.value.saved in [v["id"] for v in novel.versions(cid)]
    # Undo then Redo still goes to the passage, not to the branch
    novel.undo(cid)
    assert novel.redo(cid) == newer
    assert novel.switch_version(cid, err.value.saved) == "Opening. The stale tab's typing."


def test_stale_save_never_coalesces_into_a_newer_edit(novel):
    cid = novel.add_chapter("One", "")
    tab_a = novel.save_text(cid, "Typed in tab A.")
    tab_b = novel.save_text(cid, "Typed in tab A, then more.", base_rev=tab_a)
    assert tab_b == tab_a  # rapid typing still shares one undo step
    # a third tab still holding the first revision saves its own edit
    first = novel.store.revision(tab_a)["parent_id"]
    with pytest.raises(StaleText) as err:
        novel.save_text(cid, "Stale third tab.", base_rev=first)
    assert novel.text(cid) == "Typed in tab A, then more."
    assert novel.store.revision(err.value.saved)["text"] == "Stale third tab."
    # the writer's next edit in the live tab coalesces into the head, not the branch
    assert novel.save_text(cid, "Typed in tab A, then more!", base_rev=tab_a) == tab_a
    assert novel.store.revision(err.value.saved)["text"] == "Stale third tab."
    with pytest.raises(NovelError, match="not part of chapter"):
        novel.save_text(cid, "x", base_rev=novel.head(novel.add_chapter("Two", "y")))


def test_save_text_returns_the_head(novel):
    cid = novel.add_chapter("One", "A.")
    rid = novel.save_text(cid, "A. B.")
    assert rid == novel.head(cid) and novel.save_text(cid, "A. B.") == rid


# -- 6. an empty passage is dropped only while it is the head with nothing on top ---------
def test_stopping_an_empty_passage_keeps_what_another_writer_saved_on_it(novel, slot):
    cid = novel.add_chapter("One", "Opening.")
    novel.set_thought_settings(on=False)
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=50, seed=1))
    ev = next(gen)
    while not ev.status.startswith("Reading"):
        ev = next(gen)
    other = Novel.open(novel.folder, slot)  # another process saves on top meanwhile
    other.save_text(cid, "Opening. Another writer's words.")
    novel.stop()  # before the model wrote anything
    last = list(gen)[-1]
    assert "Stopped before any text" in last.status
    assert novel.text(cid) == "Opening. Another writer's words."
    assert other.undo(cid) == "Opening."  # the chain to it is whole
    other.close()


def test_two_tabs_on_one_head_never_coalesce_over_each_other(novel):
    """Both tabs hold the same head; each passes the text it last saw. The second tab's
    edit must not coalesce over the first tab's (within the 30 s undo step)."""
    cid = novel.add_chapter("One", "")
    head = novel.save_text(cid, "Shared start.")
    a = novel.save_text(cid, "Shared start. Tab A's line.", base_rev=head,
                        base_text="Shared start.")
    assert a == head and novel.text(cid) == "Shared start. Tab A's line."
    with pytest.raises(StaleText) as err:  # tab B still saw "Shared start."
        novel.save_text(cid, "Shared start. Tab B's line.", base_rev=head,
                        base_text="Shared start.")
    assert novel.text(cid) == "Shared start. Tab A's line."
    assert novel.store.revision(err.value.saved)["text"] == "Shared start. Tab B's line."
    assert err.value.saved in [v["id"] for v in novel.versions(cid)]


def test_sampling_choices_are_kept_per_novel(library):
    a = library.open(library.create("Book A"))
    b = library.open(library.create("Book B"))
    a.set_writing_settings(temperature=0.55, top_p=0.9, max_tokens=64)
    assert a.writing_settings() == {"temperature": 0.55, "top_p": 0.9, "max_tokens": 64}
    assert b.writing_settings() == {}
    with pytest.raises(NovelError, match="out of range"):
        a.set_writing_settings(temperature=float("nan"), top_p=0.9, max_tokens=64)
    assert a.writing_settings()["temperature"] == 0.55


@pytest.mark.parametrize("from_old_head", [True, False])
def test_typing_in_another_tab_while_the_model_writes_is_kept(novel, monkeypatch,
                                                              from_old_head):
    """Tab B types while tab A's Continue streams: B's text must not be refused and
    lost; it is kept as another version beside the model's passage."""
    cid = novel.add_chapter("One", "Opening.")
    novel.set_thought_settings(on=False)
    loaded = novel.head(cid)
    monkeypatch.setattr(writer, "stream", fake_stream([" The model", " writes on."]))
    gen = novel.continue_chapter(cid)
    next(gen)  # the model is writing now
    base = loaded if from_old_head else None
    with pytest.raises(StaleText, match="model is writing") as err:
        novel.save_text(cid, "Opening. Typed in tab B.", base_rev=base)
    for _ in gen:
        pass
    assert novel.text(cid) == "Opening. The model writes on."
    kept = [v for v in novel.versions(cid) if v["id"] == err.value.saved]
    assert kept and novel.switch_version(cid, kept[0]["id"]) == "Opening. Typed in tab B."
