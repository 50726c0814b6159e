"""Issue 13, the history side: the trash, versions (every child reachable), notes that
follow Undo, stale saves kept as a branch, and an empty passage dropped only when safe."""
from __future__ import annotations

import pytest

from engine import writer
from engine_helpers import fake_stream
from engine.errors import UserError
from engine.novel import Novel, NovelError, StaleText
from engine.thoughts import BEGIN, END
from engine.writer import Sampling


def run(gen):
    events = list(gen)
    return events[-1]


# -- 1. delete is a soft delete into a trash ------------------------------------------
def test_delete_moves_the_chapter_to_the_trash_and_restore_brings_it_back(novel):
    a = novel.chapters.add("One", "alpha beta")
    b = novel.chapters.add("Two", "gamma")
    c = novel.chapters.add("Three", "delta epsilon zeta")
    novel.chapters.delete(b)
    assert [ch["id"] for ch in novel.chapters.list()] == [a, c]
    assert [ch["position"] for ch in novel.chapters.list()] == [1, 2]
    assert novel.chapters.id(2) == c and novel.chapters.id() == c  # numbering skips it
    assert "gamma" not in novel.chapters.export("md") and "gamma" not in novel.chapters.manuscript()
    novel.chapters.delete(a)
    trash = novel.chapters.trash()
    assert [t["id"] for t in trash] == [a, b]  # newest deletion first
    assert trash[1]["title"] == "Two" and trash[1]["words"] == 1
    assert trash[0]["deleted"] >= trash[1]["deleted"] > 0
    assert set(trash[0]) == {"id", "title", "words", "deleted"}
    # a chapter added now is numbered among the live ones only
    d = novel.chapters.add("")
    assert novel.chapters.list()[-1]["title"] == "Chapter 2"
    assert novel.chapters.restore(b) == b
    assert [ch["id"] for ch in novel.chapters.list()] == [c, b, d]  # its old position 2
    assert novel.chapters.text(b) == "gamma" and [t["id"] for t in novel.chapters.trash()] == [a]
    with pytest.raises(NovelError, match="not in the trash"):
        novel.chapters.restore(b)
    with pytest.raises(NovelError, match="not in the trash"):
        novel.chapters.restore(9999)


def test_trashed_chapter_keeps_its_history_and_notes(novel):
    cid = novel.chapters.add("One", "Start.")
    novel.chapters.save(cid, "Start. More.")
    novel.thoughts.set_settings(on=False)
    novel.thoughts.add(cid, "a note")
    novel.chapters.delete(cid)
    assert novel.thoughts.list() == [] and novel.chapters.list() == []
    with pytest.raises(NovelError, match="trash"):
        next(novel.continue_chapter(cid))
    novel.chapters.restore(cid)
    assert [t["text"] for t in novel.thoughts.list()] == ["a note"]
    assert novel.chapters.undo(cid) == "Start."


# -- 2. versions: every child of the head's parent is reachable -------------------------
def test_stopped_passage_is_reachable_after_retry_and_undo(novel, monkeypatch):
    cid = novel.chapters.add("One", "Opening.")
    novel.thoughts.set_settings(on=False)
    parent = novel.chapters.head(cid)
    assert novel.chapters.versions(cid) == []  # the first revision has no alternatives
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=400, seed=1))
    for ev in gen:  # Continue, then Stop mid-stream
        if ev.delta:
            novel.stop()
    stopped = novel.chapters.text(cid)
    assert ev.status == "Stopped." and stopped != "Opening."
    first = novel.chapters.head(cid)
    monkeypatch.setattr(writer, "stream", fake_stream([" The retried passage."]))
    again = run(novel.retry(cid))
    assert again.text == "Opening. The retried passage."
    assert novel.chapters.undo(cid) == "Opening."
    assert novel.chapters.redo(cid) == again.text
    vs = novel.chapters.versions(cid)
    assert [v["id"] for v in vs] == [first, novel.chapters.head(cid)]  # oldest first
    assert [v["current"] for v in vs] == [False, True]
    assert vs[1]["preview"] == "The retried passage." and vs[1]["action"] == "retry"
    assert vs[0]["preview"] and vs[0]["preview"] in " ".join(stopped.split()) + "…"
    assert {"id", "author", "action", "created", "words", "preview",
            "current"} <= set(vs[0])
    assert novel.chapters.switch_version(cid, first) == stopped
    assert novel.chapters.head(cid) == first and novel.chapters.versions(cid)[0]["current"]
    # Redo returns to the version last shown, not merely the newest one
    novel.chapters.undo(cid)
    assert novel.chapters.head(cid) == parent
    assert novel.chapters.redo(cid) == stopped


def test_switch_version_refuses_other_chapters_and_a_busy_model(novel):
    a = novel.chapters.add("One", "Opening.")
    b = novel.chapters.add("Two", "Elsewhere.")
    with pytest.raises(NovelError, match="not a version"):
        novel.chapters.switch_version(a, novel.chapters.head(b))
    assert novel.chapters.text(a) == "Opening."
    gen = novel.continue_chapter(a, Sampling(max_new_tokens=50, seed=1))
    next(gen)
    with pytest.raises(NovelError, match="press Stop"):
        novel.chapters.switch_version(a, novel.chapters.head(a))
    novel.stop()
    list(gen)


# -- 3. notes follow Undo --------------------------------------------------------------
def test_notes_belong_to_their_revision_undo_hides_redo_restores(novel, monkeypatch):
    import engine.pipeline as novel_mod

    cid = novel.chapters.add("One", "The keeper")
    novel.chapters.save(cid, "The keeper climbed the stairs.")
    monkeypatch.setattr(writer, "stream", fake_stream([" He lit the lamp."]))
    monkeypatch.setattr(novel_mod, "write_note",
                        lambda lm, passage, bible, plan=False, seed=0, cancel=None: "lamp lit")
    novel.thoughts.set_settings(every="passage")
    mine = novel.thoughts.add(cid, "the stairs matter")  # tied to the head of now
    run(novel.continue_chapter(cid))
    assert [t["text"] for t in novel.thoughts.list(cid)] == ["the stairs matter", "lamp lit"]
    novel.chapters.undo(cid)
    assert [t["text"] for t in novel.thoughts.list(cid)] == ["the stairs matter"]
    assert "lamp lit" not in novel.chapters.memory_text(novel.chapters.get(cid))
    assert "lamp lit" not in novel.chapters.export("notes")
    assert "lamp lit" not in novel.build_context(cid)[1]["blocks"][-1]["text"]
    novel.chapters.undo(cid)  # before the writer's edit the note was made on: it goes too
    assert novel.thoughts.list(cid) == [] and novel.thoughts.list() == []
    novel.chapters.redo(cid)
    novel.chapters.redo(cid)
    assert [t["text"] for t in novel.thoughts.list(cid)] == ["the stairs matter", "lamp lit"]
    assert "lamp lit" in novel.chapters.export("notes")
    # the writer's later edits are descendants: the notes stay, anchors follow
    novel.chapters.save(cid, "At dusk, " + novel.chapters.text(cid))
    assert len(novel.thoughts.list(cid)) == 2
    assert novel.thoughts.get(mine)["anchor"] == len("At dusk, The keeper climbed the stairs.")


def test_migration_ties_old_notes_to_their_passage_or_the_head(novel, slot, monkeypatch):
    from engine.store import Store

    cid = novel.chapters.add("One", "Start.")
    novel.thoughts.set_settings(on=False)
    monkeypatch.setattr(writer, "stream", fake_stream([f" Run.{BEGIN}fear{END}"]))
    run(novel.continue_chapter(cid))
    passage_rev = novel.chapters.head(cid)
    novel.chapters.save(cid, novel.chapters.text(cid) + " Then rest.")
    tid = novel.thoughts.add(cid, "writer's")
    folder = novel.folder
    novel.close()
    # no public way: the database is taken back to schema 3 (the columns of migration 4
    # dropped) on the store's sqlite connection; no store method undoes a migration
    db = Store.open(folder).db
    for table, col in (("thoughts", "revision_id"), ("chapters", "deleted"),
                       ("revisions", "visited")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    db.execute("DROP INDEX IF EXISTS revisions_parent")
    db.execute("PRAGMA user_version=3")
    db.conn.close()
    again = Novel.open(folder, slot)
    rows = {r["text"]: r["revision_id"] for r in again.thoughts.list(cid)}
    assert rows == {"fear": passage_rev, "writer's": again.chapters.head(cid)}
    assert again.thoughts.get(tid)["revision_id"] == again.chapters.head(cid)
    again.chapters.undo(cid)
    assert [t["text"] for t in again.thoughts.list(cid)] == ["fear"]
    again.close()


# -- 7. a stale tab never overwrites a newer passage ------------------------------------
def test_stale_save_is_kept_as_another_version_and_the_head_stays(novel, monkeypatch):
    cid = novel.chapters.add("One", "Opening.")
    novel.thoughts.set_settings(on=False)
    loaded = novel.chapters.head(cid)  # a tab loads the chapter here
    monkeypatch.setattr(writer, "stream", fake_stream([" The model's newer passage."]))
    newer = run(novel.continue_chapter(cid)).text  # written from another tab
    head = novel.chapters.head(cid)
    with pytest.raises(StaleText) as err:
        novel.chapters.save(cid, "Opening. The stale tab's typing.", base_rev=loaded)
    assert isinstance(err.value, NovelError)
    assert err.value.head == head and "Other versions" in str(err.value)
    assert novel.chapters.text(cid) == newer and novel.chapters.head(cid) == head  # nothing overwritten
    branch = novel.store.revision(err.value.saved)
    assert branch["parent_id"] == loaded and branch["author"] == "writer"
    assert err.value.saved in [v["id"] for v in novel.chapters.versions(cid)]
    # Undo then Redo still goes to the passage, not to the branch
    novel.chapters.undo(cid)
    assert novel.chapters.redo(cid) == newer
    assert novel.chapters.switch_version(cid, err.value.saved) == "Opening. The stale tab's typing."


def test_stale_save_never_coalesces_into_a_newer_edit(novel):
    cid = novel.chapters.add("One", "")
    tab_a = novel.chapters.save(cid, "Typed in tab A.")
    tab_b = novel.chapters.save(cid, "Typed in tab A, then more.", base_rev=tab_a)
    assert tab_b == tab_a  # rapid typing still shares one undo step
    # a third tab still holding the first revision saves its own edit
    first = novel.store.revision(tab_a)["parent_id"]
    with pytest.raises(StaleText) as err:
        novel.chapters.save(cid, "Stale third tab.", base_rev=first)
    assert novel.chapters.text(cid) == "Typed in tab A, then more."
    assert novel.store.revision(err.value.saved)["text"] == "Stale third tab."
    # the writer's next edit in the live tab coalesces into the head, not the branch
    assert novel.chapters.save(cid, "Typed in tab A, then more!", base_rev=tab_a) == tab_a
    assert novel.store.revision(err.value.saved)["text"] == "Stale third tab."
    with pytest.raises(NovelError, match="not part of chapter"):
        novel.chapters.save(cid, "x", base_rev=novel.chapters.head(novel.chapters.add("Two", "y")))


def test_save_text_returns_the_head(novel):
    cid = novel.chapters.add("One", "A.")
    rid = novel.chapters.save(cid, "A. B.")
    assert rid == novel.chapters.head(cid) and novel.chapters.save(cid, "A. B.") == rid


# -- 6. an empty passage is dropped only while it is the head with nothing on top ---------
def test_stopping_an_empty_passage_keeps_what_another_writer_saved_on_it(novel, slot):
    cid = novel.chapters.add("One", "Opening.")
    novel.thoughts.set_settings(on=False)
    gen = novel.continue_chapter(cid, Sampling(max_new_tokens=50, seed=1))
    ev = next(gen)
    while not ev.status.startswith("Reading"):
        ev = next(gen)
    other = Novel.open(novel.folder, slot)  # another process saves on top meanwhile
    other.chapters.save(cid, "Opening. Another writer's words.")
    novel.stop()  # before the model wrote anything
    last = list(gen)[-1]
    assert "Stopped before any text" in last.status
    assert novel.chapters.text(cid) == "Opening. Another writer's words."
    assert other.chapters.undo(cid) == "Opening."  # the chain to it is whole
    other.close()


def test_two_tabs_on_one_head_never_coalesce_over_each_other(novel):
    """Both tabs hold the same head; each passes the text it last saw. The second tab's
    edit must not coalesce over the first tab's (within the 30 s undo step)."""
    cid = novel.chapters.add("One", "")
    head = novel.chapters.save(cid, "Shared start.")
    a = novel.chapters.save(cid, "Shared start. Tab A's line.", base_rev=head,
                        base_text="Shared start.")
    assert a == head and novel.chapters.text(cid) == "Shared start. Tab A's line."
    with pytest.raises(StaleText) as err:  # tab B still saw "Shared start."
        novel.chapters.save(cid, "Shared start. Tab B's line.", base_rev=head,
                        base_text="Shared start.")
    assert novel.chapters.text(cid) == "Shared start. Tab A's line."
    assert novel.store.revision(err.value.saved)["text"] == "Shared start. Tab B's line."
    assert err.value.saved in [v["id"] for v in novel.chapters.versions(cid)]


def test_sampling_choices_are_kept_per_novel(library):
    a = library.open(library.create("Book A"))
    b = library.open(library.create("Book B"))
    a.settings.set("writing", temperature=0.55, top_p=0.9, max_tokens=64)
    assert a.settings.get("writing").to_dict() == {"temperature": 0.55, "top_p": 0.9,
                                                   "max_tokens": 64}
    assert not b.settings.stored("writing") and b.settings.get("writing").temperature is None
    with pytest.raises(UserError, match="temperature"):
        a.settings.set("writing", temperature=float("nan"), top_p=0.9, max_tokens=64)
    with pytest.raises(UserError, match="must lie in"):
        a.settings.set("writing", top_p=1.5)
    assert a.settings.get("writing").temperature == 0.55


@pytest.mark.parametrize("from_old_head", [True, False])
def test_typing_in_another_tab_while_the_model_writes_is_kept(novel, monkeypatch,
                                                              from_old_head):
    """Tab B types while tab A's Continue streams: B's text must not be refused and
    lost; it is kept as another version beside the model's passage."""
    cid = novel.chapters.add("One", "Opening.")
    novel.thoughts.set_settings(on=False)
    loaded = novel.chapters.head(cid)
    monkeypatch.setattr(writer, "stream", fake_stream([" The model", " writes on."]))
    gen = novel.continue_chapter(cid)
    next(gen)  # the model is writing now
    base = loaded if from_old_head else None
    with pytest.raises(StaleText, match="model is writing") as err:
        novel.chapters.save(cid, "Opening. Typed in tab B.", base_rev=base)
    for _ in gen:
        pass
    assert novel.chapters.text(cid) == "Opening. The model writes on."
    kept = [v for v in novel.chapters.versions(cid) if v["id"] == err.value.saved]
    assert kept and novel.chapters.switch_version(cid, kept[0]["id"]) == "Opening. Typed in tab B."
