"""Manuscripts in and out: .docx in standard manuscript format, .docx with the margin
notes as Word comments, EPUB 3; and importing .docx and .epub back."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

docx = pytest.importorskip("docx")
from docx.shared import Inches, Pt  # noqa: E402

from engine.novel import Novel  # noqa: E402

CHAPTERS = [
    ("Chapter One", "It was *dark* on the road, and **cold**.\n\nMara walked on, "
                    "counting her steps.\n\n* * *\n\nMorning came *slowly*, grey and wet."),
    ("Chapter Two", "The farmhouse had no lights.\n\nShe knocked twice."),
    ("The Last Chapter", "Home, at last."),
]
NOTES = [(0, "She is afraid of the dark, not the cold.", "It was"),
         (0, "The scene break skips the night.", "Morning came"),
         (1, "Who lives here? Plant it earlier.", "She knocked")]


@pytest.fixture
def book(tmp_path):
    """A novel of three chapters, with italics, bold, a scene break and margin notes."""
    novel = Novel.create(tmp_path / "book", "The Long Way Home", "Mara walks home.", "")
    ids = []
    for title, text in CHAPTERS:
        cid = novel.chapters.add(title)
        novel.chapters.save(cid, text)
        ids.append(cid)
    for i, note, where in NOTES:
        anchor = CHAPTERS[i][1].index(where) + len(where)
        novel.thoughts.add(ids[i], note, anchor=anchor)
    yield novel
    novel.close()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _open_docx(data: bytes):
    return docx.Document(io.BytesIO(data))


# -- export: the manuscript format --------------------------------------------------------
def test_docx_is_in_standard_manuscript_format(book):
    doc = _open_docx(book.chapters.export("docx"))
    section = doc.sections[0]
    for side in ("top_margin", "bottom_margin", "left_margin", "right_margin"):
        assert getattr(section, side) == Inches(1), side
    normal = doc.styles["Normal"]
    assert normal.font.size == Pt(12) and normal.font.name == "Times New Roman"
    assert normal.paragraph_format.line_spacing == 2.0  # double-spaced
    # the running header from page 2: surname (none in this bible) / SHORT TITLE / page
    header = section.header.paragraphs[0]
    assert header.text.startswith("THE LONG WAY HOME / ")
    assert b"PAGE" in section.header._element.xml.encode()  # a page-number field
    assert section.different_first_page_header_footer  # no header on the title page
    body = [p for p in doc.paragraphs if p.text.strip()]
    words = sum(len(text.split()) for _, text in CHAPTERS) - 3  # "* * *" is no word
    assert f"about {words} words" in body[0].text  # the title page with the word count
    assert body[1].text == "THE LONG WAY HOME"
    headings = [p for p in body if p.style.name == "Heading 1"]
    assert [h.text for h in headings] == [t for t, _ in CHAPTERS]
    assert all(h.paragraph_format.page_break_before for h in headings)  # each on a new page
    assert headings[0].style.font.size == Pt(12)
    italic = [r.text for p in body for r in p.runs if r.italic]
    assert italic == ["dark", "slowly"] and [r.text for p in body for r in p.runs if r.bold] \
        == ["cold"]
    assert any(p.text == "#" for p in body)  # the scene break, as manuscripts mark it
    assert not any("*" in p.text for p in body)


def test_docx_header_names_the_author_when_the_bible_has_one(book):
    # the story bible has no author field yet: the renderer is called with one directly
    from engine.formats import render
    bible = {**book.bible, "author": "Ann Mary Smith", "title": "A Title Far Too Long "
             "For Any Running Header"}
    doc = _open_docx(render(bible, [{"title": "One", "text": "Words."}], "docx"))
    header = doc.sections[0].header.paragraphs[0].text
    assert header.startswith("Smith / A TITLE FAR TOO LONG FOR ANY / ")
    assert "Ann Mary Smith" in doc.paragraphs[0].text and doc.core_properties.author \
        == "Ann Mary Smith"


def _comments(data: bytes) -> list[tuple[str, str]]:
    """(comment text, text of the paragraph holding its anchor) from the document XML."""
    from lxml import etree
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        body = etree.fromstring(z.read("word/document.xml"))
        comments = etree.fromstring(z.read("word/comments.xml"))
    w = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    text = {c.get(w + "id"): "".join(c.itertext()) for c in comments.iter(w + "comment")}
    out = []
    for p in body.iter(w + "p"):
        for start in p.iter(w + "commentRangeStart"):
            out.append((text[start.get(w + "id")],
                        "".join(t.text or "" for t in p.iter(w + "t"))))
    return out


def test_docx_notes_are_comments_on_their_paragraphs(book):
    data = book.chapters.export("docx-notes")
    got = _comments(data)
    assert len(got) == len(NOTES)
    for (i, note, where), (comment, paragraph) in zip(NOTES, got):
        assert comment == note and paragraph.startswith(where), (comment, paragraph)
    doc = _open_docx(data)  # and the prose is the plain manuscript's
    plain = _open_docx(book.chapters.export("docx"))
    assert [p.text for p in doc.paragraphs] == [p.text for p in plain.paragraphs]


def test_docx_and_epub_hold_no_margin_note(book):
    notes = [n for _, n, _ in NOTES]
    for fmt in ("docx", "epub"):
        with zipfile.ZipFile(io.BytesIO(book.chapters.export(fmt))) as z:
            blob = b"".join(z.read(n) for n in z.namelist()).decode("utf-8", "replace")
            assert "word/comments.xml" not in z.namelist()
        assert not any(n in blob for n in notes), fmt
        assert "Mara walked on" in blob  # (the prose is there)


def test_epub_has_title_page_toc_and_a_file_per_chapter(book):
    with zipfile.ZipFile(io.BytesIO(book.chapters.export("epub"))) as z:
        names = z.namelist()
        assert names[0] == "mimetype" and z.read("mimetype") == b"application/epub+zip"
        assert z.getinfo("mimetype").compress_type == zipfile.ZIP_STORED
        opf = z.read("OEBPS/content.opf").decode()
        nav = z.read("OEBPS/nav.xhtml").decode()
        chapters = sorted(n for n in names if "chapter-" in n)
        assert len(chapters) == 3 and "<h1>Chapter Two</h1>" in z.read(chapters[1]).decode()
        assert 'epub:type="titlepage"' in z.read("OEBPS/title.xhtml").decode()
        assert "<em>dark</em>" in z.read(chapters[0]).decode()
    assert 'version="3.0"' in opf and "<dc:title>The Long Way Home</dc:title>" in opf
    assert "<dc:description>Mara walks home.</dc:description>" in opf
    assert 'properties="nav"' in opf and all(t in nav for t, _ in CHAPTERS)


def _epubcheck() -> list[str] | None:
    """The epubcheck command (Debian's package ships the jar), or None."""
    jar = Path("/usr/share/java/epubcheck.jar")
    if jar.is_file() and shutil.which("java"):
        return ["java", "-jar", str(jar)]
    return None


@pytest.mark.skipif(_epubcheck() is None,
                    reason="epubcheck is not installed (apt-get install epubcheck)")
def test_epub_passes_epubcheck(book, tmp_path):
    out = tmp_path / "book.epub"
    out.write_bytes(book.chapters.export("epub"))
    p = subprocess.run([*_epubcheck(), str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "No errors or warnings detected" in p.stdout, \
        p.stdout + p.stderr


def test_cli_writes_binary_exports_to_a_file(book, tmp_path):
    from engine.cli.main import main
    out = tmp_path / "out"
    out.mkdir()
    for fmt, name in (("docx", "m.docx"), ("epub", "m.epub"), ("docx-notes", "n.docx")):
        assert main(["export", "--project", str(book.folder), "--format", fmt,
                     "--out", str(out / name)]) == 0
        assert zipfile.is_zipfile(out / name)
    assert _comments((out / "n.docx").read_bytes())


def test_cli_binary_export_without_out_writes_a_default_file(book, tmp_path, monkeypatch,
                                                             capsys):
    from engine.cli.main import main
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--project", str(book.folder), "--format", "epub"]) == 0
    assert "Wrote book.epub (EPUB 3 e-book, 3 chapter(s)" in capsys.readouterr().out
    assert zipfile.is_zipfile(tmp_path / "book.epub")


# -- import: .docx and .epub back in ------------------------------------------------------
@pytest.mark.parametrize("fmt,suffix", [("docx", ".docx"), ("epub", ".epub"),
                                        ("docx-notes", ".docx")])
def test_round_trip_keeps_chapters_and_text(book, tmp_path, fmt, suffix):
    path = tmp_path / f"exported{suffix}"
    path.write_bytes(book.chapters.export(fmt))
    other = Novel.create(tmp_path / "other", "Another", "", "")
    try:
        ids = other.chapters.import_files([path])
        got = other.chapters.list()
        assert len(ids) == len(CHAPTERS) == len(got)
        for (title, text), chapter in zip(CHAPTERS, got):
            assert chapter["title"] == title
            assert _flat(other.chapters.text(chapter["id"])) == _flat(text)  # italics too
        assert not other.thoughts.list()  # a comment is not a margin note of the import
    finally:
        other.close()


def _import_refused(tmp_path, name: str, data: bytes, match: str):
    from engine.store import ProjectError
    path = tmp_path / name
    path.write_bytes(data)
    novel = Novel.create(tmp_path / f"n-{name}", "N", "", "")
    try:
        cid = novel.chapters.add("Kept")
        novel.chapters.save(cid, "Old words.")
        with pytest.raises(ProjectError, match=match):
            novel.chapters.import_files([path])
        assert [c["title"] for c in novel.chapters.list()] == ["Kept"]  # nothing added
    finally:
        novel.close()


def test_empty_and_corrupt_files_are_refused_with_a_clear_message(book, tmp_path):
    for suffix in (".docx", ".epub"):
        _import_refused(tmp_path, f"empty{suffix}", b"", "is empty")
        _import_refused(tmp_path, f"junk{suffix}", b"not a zip at all " * 50, "not a valid")
    good = book.chapters.export("docx")
    _import_refused(tmp_path, "cut.docx", good[: len(good) // 2], "not a valid")
    _import_refused(tmp_path, "protected.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600),
                    "password-protected")
    doc = docx.Document()  # a real document without a word in it
    blank = io.BytesIO()
    doc.save(blank)
    _import_refused(tmp_path, "blank.docx", blank.getvalue(), "holds no text")


def _rezip(data: bytes, change) -> bytes:
    """The EPUB's entries, passed through change(name, bytes) -> bytes | None (dropped),
    plus whatever change(None, None) returns as extra {name: bytes}."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            body = change(name, src.read(name))
            if body is not None:
                dst.writestr(name, body)
        for name, body in (change(None, None) or {}).items():
            dst.writestr(name, body)
    return out.getvalue()


def test_drm_protected_and_damaged_epubs_are_refused(book, tmp_path):
    epub = book.chapters.export("epub")
    adept = _rezip(epub, lambda n, b: {"META-INF/rights.xml": b"<rights/>"} if n is None else b)
    _import_refused(tmp_path, "adept.epub", adept, "protected by DRM")
    encryption = (b'<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
                  b'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
                  b'<enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
                  b'<enc:CipherData><enc:CipherReference URI="OEBPS/chapter-001.xhtml"/>'
                  b'</enc:CipherData></enc:EncryptedData></encryption>')
    locked = _rezip(epub, lambda n, b: {"META-INF/encryption.xml": encryption} if n is None
                    else b)
    _import_refused(tmp_path, "locked.epub", locked, "protected by DRM")
    no_opf = _rezip(epub, lambda n, b: None if n == "OEBPS/content.opf" else b)
    _import_refused(tmp_path, "no-opf.epub", no_opf, "damaged EPUB")
    bad_xml = _rezip(epub, lambda n, b: b[:40] if n == "META-INF/container.xml" else b)
    _import_refused(tmp_path, "bad-xml.epub", bad_xml, "damaged EPUB")


def test_docx_from_a_word_processor_is_split_on_headings(tmp_path):
    """A writer's own .docx: a title, a short front page, chapters as Heading 1, a
    section as Heading 2 (stays in its chapter), italics by run and by character style."""
    doc = docx.Document()
    doc.add_paragraph("My Novel", style="Title")
    doc.add_paragraph("for my mother")
    doc.add_heading("One", level=1)
    p = doc.add_paragraph("She ")
    p.add_run("ran").italic = True
    p.add_run(" and ")
    p.add_run("hid").style = doc.styles["Emphasis"]  # italic by its character style
    doc.add_heading("A part of one", level=2)
    doc.add_paragraph("More.")
    doc.add_paragraph("⁂")
    doc.add_heading("Two", level=1)
    doc.add_paragraph("The end.")
    path = tmp_path / "mine.docx"
    doc.save(path)
    novel = Novel.create(tmp_path / "n", "N", "", "")
    try:
        novel.chapters.import_files([path])
        got = [(c["title"], novel.chapters.text(c["id"])) for c in novel.chapters.list()]
    finally:
        novel.close()
    assert [t for t, _ in got] == ["One", "Two"]  # the title and dedication skipped
    assert got[0][1].startswith("She *ran* and *hid*")
    assert "A part of one\n\nMore.\n\n* * *" in got[0][1] and got[1][1] == "The end."


def test_cli_import_takes_docx_and_epub(book, tmp_path, capsys):
    from engine.cli.main import main
    for fmt in ("docx", "epub"):
        (tmp_path / f"b.{fmt}").write_bytes(book.chapters.export(fmt))
    target = tmp_path / "target"
    assert main(["new", "--project", str(target), "--title", "T"]) == 0
    assert main(["import", "--project", str(target), str(tmp_path / "b.docx"),
                 str(tmp_path / "b.epub")]) == 0
    assert "Imported 6 chapter(s)." in capsys.readouterr().out


def test_epub_without_headings_takes_titles_from_its_contents(book, tmp_path):
    """E-books often title chapters only in the table of contents; a file not listed
    there (a converter's split of a long chapter) continues the chapter before it."""
    import re

    def change(name, body):
        if name is None:
            return {"OEBPS/chapter-002b.xhtml": split}
        if name and "chapter-" in name:
            return re.sub(rb"<h1>.*?</h1>", b"", body)
        if name == "OEBPS/content.opf":
            return body.replace(b'<itemref idref="f2"/>', b'<itemref idref="f2"/>'
                                b'<itemref idref="f2b"/>').replace(
                b"</manifest>", b'<item id="f2b" href="chapter-002b.xhtml" '
                b'media-type="application/xhtml+xml"/></manifest>')
        return body

    with zipfile.ZipFile(io.BytesIO(book.chapters.export("epub"))) as z:
        split = z.read("OEBPS/chapter-002.xhtml").replace(b"<h1>Chapter Two</h1>", b"") \
            .replace(b"The farmhouse had no lights.", b"The dog barked.") \
            .replace(b"<p>She knocked twice.</p>", b"")
    path = tmp_path / "plain.epub"
    path.write_bytes(_rezip(book.chapters.export("epub"), change))
    novel = Novel.create(tmp_path / "n", "N", "", "")
    try:
        novel.chapters.import_files([path])
        got = [(c["title"], novel.chapters.text(c["id"])) for c in novel.chapters.list()]
    finally:
        novel.close()
    assert [t for t, _ in got] == [t for t, _ in CHAPTERS]
    assert got[1][1].endswith("She knocked twice.\n\nThe dog barked.")


def test_page_imports_a_docx_and_exports_an_epub(book, app_server, page, tmp_path):
    """Through the browser: Import takes a .docx, Export as EPUB offers the file."""
    from playwright.sync_api import expect
    from ui_helpers import create_novel, editor, status

    url, projects = app_server
    manuscript = tmp_path / "long-way.docx"
    manuscript.write_bytes(book.chapters.export("docx"))
    create_novel(page, url, "Long Way")
    expect(status(page)).to_contain_text("Created")
    page.get_by_text("Import and export", exact=True).first.click()
    page.locator("#import-files input[type=file]").set_input_files(str(manuscript))
    page.locator("#import").click()
    expect(status(page)).to_contain_text("Imported 3 chapter(s).")
    expect(editor(page)).to_have_value("Home, at last.")
    page.locator("#export-format input").click()
    page.get_by_role("option", name="EPUB e-book").click()
    with page.expect_download() as download:
        page.locator("#export").click()
        expect(status(page)).to_contain_text(re.compile(r"Exported .*\.epub\."))
        page.locator("#export-file a").first.click()
    saved = tmp_path / "got.epub"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as z:
        assert "Mara walked on" in z.read("OEBPS/chapter-001.xhtml").decode()
