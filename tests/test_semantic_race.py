"""Semantic search while the index changes under it (the catch-up thread syncing): a
search that finds the index emptied after its first look returns nothing, and does not
fail (seen in a browser run: FAISS asserted k > 0 from the memories panel's search)."""
from __future__ import annotations


def test_search_over_an_index_emptied_meanwhile_returns_nothing(novel, monkeypatch):
    novel.memories.add("Elena's eyes are grey as slate.")
    sem = novel.memories.semantic
    assert sem.search("grey eyes", 5)  # the memory is indexed and found
    st = sem._state  # no public way: the race needs the index emptied mid-search
    real = sem.embedder.encode

    def encode_then_empty(texts):
        vecs = real(texts)
        st.index.reset()  # as a concurrent sync dropping every row before the search
        return vecs
    monkeypatch.setattr(sem.embedder, "encode", encode_then_empty)
    monkeypatch.setattr(sem, "sync", lambda *a, **k: {"pending": 0})
    assert sem.search("grey eyes", 5) == []
