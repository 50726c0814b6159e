"""Word (.docx) in standard manuscript format, and reading a writer's .docx back.

python-docx (MIT) writes and reads the file: it is the well-kept library for .docx and
since 1.2 it writes comments, which the "with margin notes" export needs."""
from __future__ import annotations

import io
import zipfile

from ..store import ProjectError
from .prose import (SCENE_BREAK, Para, book_meta, is_scene_break, markdown, note_targets,
                    paragraphs, runs, short_title, word_count)

FONT = "Times New Roman"
AUTHOR_MODEL = "Mnemosyne"


def write(bible: dict, chapters: list[dict], notes: bool = False) -> bytes:
    """The manuscript: Times New Roman 12 pt, double-spaced, 1-inch margins, a header
    "Surname / SHORT TITLE / page" from page 2, a title page with the word count, each
    chapter on a new page, "#" between scenes. ``notes``: each chapter's margin notes
    (chapter dicts' 'notes', rows with 'anchor' and 'text') as Word comments."""
    from docx import Document
    from docx.enum.text import WD_ALIGN_PARAGRAPH, WD_TAB_ALIGNMENT

    title, author = book_meta(bible)
    doc = Document()
    _page_setup(doc, title, author)
    props = doc.core_properties
    props.title, props.author, props.last_modified_by = title, author, author
    props.comments = ""

    count = word_count(chapters)
    rounded = count if count < 1000 else round(count, -2)
    first = doc.add_paragraph(style="Title Page")
    first.paragraph_format.tab_stops.add_tab_stop(doc.sections[0].page_width
                                                  - 2 * doc.sections[0].left_margin,
                                                  WD_TAB_ALIGNMENT.RIGHT)
    first.add_run(f"{author}\tabout {rounded:,} words")
    head = doc.add_paragraph(style="Title Page")
    head.alignment = WD_ALIGN_PARAGRAPH.CENTER
    head.paragraph_format.space_before = _inches(3)
    head.add_run(title.upper())
    if author:
        by = doc.add_paragraph(f"by {author}", style="Title Page")
        by.alignment = WD_ALIGN_PARAGRAPH.CENTER

    for n, chapter in enumerate(chapters, 1):
        h = doc.add_paragraph((chapter["title"] or "").strip() or f"Chapter {n}",
                              style="Heading 1")
        h.paragraph_format.page_break_before = True
        paras = paragraphs(chapter.get("text") or "")
        made = []
        for p in paras:
            made.append(_paragraph(doc, p))
        if notes:
            for i, note in note_targets(chapter.get("text") or "", paras,
                                              chapter.get("notes") or []):
                anchor = made[i] if made else h.runs
                who = AUTHOR_MODEL if note.get("passage_id") else (author or "Writer")
                doc.add_comment(anchor, text=note["text"], author=who,
                                initials="".join(w[0] for w in who.split())[:3].upper())
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def _inches(n):
    from docx.shared import Inches
    return Inches(n)


def _paragraph(doc, p: Para) -> list:
    """One body paragraph; its runs (a comment's anchor)."""
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    if p.scene:
        par = doc.add_paragraph(style="Scene Break")
        par.alignment = WD_ALIGN_PARAGRAPH.CENTER
        return [par.add_run("#")]
    par = doc.add_paragraph()
    made = []
    for text, italic, bold in runs(p.text) or [(p.text, False, False)]:
        run = par.add_run(text)
        run.italic, run.bold = italic or None, bold or None
        made.append(run)
    return made


def _page_setup(doc, title: str, author: str) -> None:
    from docx.enum.style import WD_STYLE_TYPE
    from docx.enum.text import WD_ALIGN_PARAGRAPH, WD_LINE_SPACING
    from docx.shared import Inches, Pt, RGBColor

    section = doc.sections[0]
    section.page_width, section.page_height = Inches(8.5), Inches(11)
    for side in ("top_margin", "bottom_margin", "left_margin", "right_margin"):
        setattr(section, side, Inches(1))
    section.header_distance = Inches(0.5)
    section.different_first_page_header_footer = True  # no header on the title page

    _fonts(doc.styles.element.find(_qn("w:docDefaults")))
    normal = doc.styles["Normal"]
    _set_font(normal, Pt(12))
    pf = normal.paragraph_format
    pf.line_spacing_rule = WD_LINE_SPACING.DOUBLE
    pf.space_before = pf.space_after = Pt(0)
    pf.first_line_indent = Inches(0.5)
    pf.widow_control = True

    heading = doc.styles["Heading 1"]
    _set_font(heading, Pt(12))
    heading.font.bold = heading.font.italic = False
    heading.font.color.rgb = RGBColor(0, 0, 0)
    hf = heading.paragraph_format
    hf.alignment = WD_ALIGN_PARAGRAPH.CENTER
    hf.first_line_indent = Inches(0)
    hf.space_before, hf.space_after = Inches(2), Pt(24)  # a third down the page
    hf.line_spacing_rule = WD_LINE_SPACING.DOUBLE
    hf.keep_with_next = True

    for name in ("Title Page", "Scene Break"):
        style = doc.styles.add_style(name, WD_STYLE_TYPE.PARAGRAPH)
        style.base_style = normal
        style.paragraph_format.first_line_indent = Inches(0)
    doc.styles["Title Page"].paragraph_format.line_spacing_rule = WD_LINE_SPACING.SINGLE

    header = section.header.paragraphs[0]
    header.alignment = WD_ALIGN_PARAGRAPH.RIGHT
    header.paragraph_format.first_line_indent = Inches(0)
    header.paragraph_format.line_spacing_rule = WD_LINE_SPACING.SINGLE
    surname = author.split()[-1] if author else ""
    header.add_run(" / ".join(x for x in (surname, short_title(title)) if x) + " / ")
    _page_field(header)
    section.first_page_header.is_linked_to_previous = False


def _qn(tag):
    from docx.oxml.ns import qn
    return qn(tag)


def _set_font(style, size) -> None:
    style.font.name, style.font.size = FONT, size
    _fonts(style.element)


def _fonts(element) -> None:
    """The serif font for every script, and no theme font over it (Word's default
    template names theme fonts, which win over a named font)."""
    from docx.oxml import OxmlElement
    if element is None:
        return
    rpr = element.find(".//" + _qn("w:rPr"))
    if rpr is None:
        return
    fonts = rpr.find(_qn("w:rFonts"))
    if fonts is None:
        fonts = OxmlElement("w:rFonts")
        rpr.insert(0, fonts)
    for attr in ("w:asciiTheme", "w:hAnsiTheme", "w:eastAsiaTheme", "w:cstheme"):
        fonts.attrib.pop(_qn(attr), None)
    for attr in ("w:ascii", "w:hAnsi", "w:eastAsia", "w:cs"):
        fonts.set(_qn(attr), FONT)


def _page_field(paragraph) -> None:
    """A PAGE field (Word fills in the number; "1" until it does)."""
    from docx.oxml import OxmlElement
    for kind, text in (("begin", None), (None, " PAGE "), ("separate", None),
                       (None, "1"), ("end", None)):
        run = paragraph.add_run()
        if kind:
            el = OxmlElement("w:fldChar")
            el.set(_qn("w:fldCharType"), kind)
            run._r.append(el)  # python-docx has no field API: the run's XML directly
        elif text == " PAGE ":
            el = OxmlElement("w:instrText")
            el.set(_qn("xml:space"), "preserve")
            el.text = text
            run._r.append(el)
        else:
            run.text = text


# -- reading ---------------------------------------------------------------------------
def blocks(data: bytes, name: str) -> list[tuple]:
    """The document as ("h", level, text) and ("p", markdown) blocks, in order; or a
    ProjectError for a protected, corrupt or non-Word file."""
    if data[:4] == b"\xd0\xcf\x11\xe0":
        raise ProjectError(f"{name} is password-protected or an old Word (.doc) file; "
                           "remove the password or save it as .docx, then import it.")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if "word/document.xml" not in z.namelist():
                raise ProjectError(f"{name} is not a Word document (no word/document.xml).")
    except zipfile.BadZipFile as e:
        raise ProjectError(f"{name} is not a valid .docx file (damaged or not Word); "
                           "open it in Word or LibreOffice and save it again.") from e
    from docx import Document
    try:
        doc = Document(io.BytesIO(data))
        return [b for p in doc.paragraphs if (b := _block(p)) is not None]
    except ProjectError:
        raise
    except Exception as e:  # lxml and python-docx raise many kinds on a damaged file
        raise ProjectError(f"{name} could not be read as a Word document ({e}); open it "
                           "in Word or LibreOffice and save it again.") from e


def _block(p):
    text = p.text.strip()
    if not text:
        return None
    style = (p.style.name if p.style is not None else "") or ""
    if style.startswith("Heading ") and style[8:].isdigit():
        return ("h", int(style[8:]), " ".join(text.split()))
    if style == "Title Page":  # our own title page: the book, not a chapter
        return None
    if is_scene_break(text):
        return ("p", SCENE_BREAK)
    pieces = []
    for item in p.iter_inner_content():  # runs, and the runs of hyperlinks
        for run in getattr(item, "runs", [item]):
            pieces.append(_piece(run))
    md = markdown(pieces)
    plain = "".join(t for t, _, _ in pieces)
    # text in what python-docx does not walk (tracked insertions, smart tags): keep the
    # words, lose the italics
    return ("p", md if " ".join(plain.split()) == " ".join(text.split()) else text)


def _piece(run) -> tuple[str, bool, bool]:
    """(text, italic, bold): set on the run, else by its character style (Emphasis)."""
    styled = run.style.font if run.style is not None else None
    italic = run.italic if run.italic is not None else bool(styled and styled.italic)
    bold = run.bold if run.bold is not None else bool(styled and styled.bold)
    return run.text, bool(italic), bool(bold)
