"""EPUB 3, written and read with the standard library (zipfile, html.parser, ElementTree).

An EPUB is a zip of XHTML files with a fixed layout, so no library is needed; ebooklib,
the usual one, is AGPL-3.0, which would bind the whole app."""
from __future__ import annotations

import io
import uuid
import zipfile
from datetime import datetime, timezone
from html import escape
from html.parser import HTMLParser
from posixpath import dirname, join, normpath
from urllib.parse import unquote
from xml.etree import ElementTree

from ..store import ProjectError
from .prose import SCENE_BREAK, Para, book_meta, is_scene_break, markdown, paragraphs, runs

_XHTML = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops" \
xml:lang="{lang}" lang="{lang}">
<head>
<meta charset="utf-8"/>
<title>{title}</title>
<link rel="stylesheet" type="text/css" href="style.css"/>
</head>
<body>
{body}
</body>
</html>
"""
_CSS = """body { font-family: serif; line-height: 1.4; }
h1 { text-align: center; font-weight: normal; margin: 3em 0 2em; }
p { margin: 0; text-indent: 1.5em; }
h1 + p, hr.scene + p { text-indent: 0; }
hr.scene { border: 0; margin: 1em 0; text-align: center; }
hr.scene::after { content: "* * *"; }
section.titlepage { text-align: center; margin-top: 30%; }
section.titlepage p { text-indent: 0; }
"""
_CONTAINER = """<?xml version="1.0" encoding="utf-8"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
<rootfiles>
<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>
</rootfiles>
</container>
"""
XHTML_TYPE = "application/xhtml+xml"


def write(bible: dict, chapters: list[dict]) -> bytes:
    """EPUB 3: a title page, the table of contents, one XHTML file per chapter, the
    metadata (title, author, premise as the description) from the story bible."""
    title, author = book_meta(bible)
    lang = (bible.get("language") or "en").strip() or "en"
    files = []  # (name, title, xhtml)
    by = f'<p class="author">by {escape(author)}</p>' if author else ""
    files.append(("title.xhtml", title, _XHTML.format(lang=lang, title=escape(title), body=(
        f'<section class="titlepage" epub:type="titlepage">\n'
        f'<h1 class="title">{escape(title)}</h1>\n{by}\n</section>'))))
    for i, chapter in enumerate(chapters, 1):
        # an empty title would leave an empty link in the contents (epubcheck refuses it)
        chapter = {**chapter, "title": (chapter["title"] or "").strip() or f"Chapter {i}"}
        body = ['<section epub:type="chapter">', f"<h1>{escape(chapter['title'])}</h1>"]
        body += [_html(p) for p in paragraphs(chapter.get("text") or "")]
        body.append("</section>")
        files.append((f"chapter-{i:03d}.xhtml", chapter["title"],
                      _XHTML.format(lang=lang, title=escape(chapter["title"]),
                                    body="\n".join(body))))
    toc = "\n".join(f'<li><a href="{n}">{escape(t)}</a></li>' for n, t, _ in files)
    nav = _XHTML.format(lang=lang, title="Contents", body=(
        f'<nav epub:type="toc" id="toc">\n<h1>Contents</h1>\n<ol>\n{toc}\n</ol>\n</nav>\n'
        '<nav epub:type="landmarks" hidden="">\n<ol>\n'
        '<li><a epub:type="titlepage" href="title.xhtml">Title page</a></li>\n'
        '<li><a epub:type="toc" href="nav.xhtml">Contents</a></li>\n</ol>\n</nav>'))
    ident = uuid.uuid5(uuid.NAMESPACE_URL, f"mnemosyne:{title}\n{author}")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        # the mimetype entry comes first and uncompressed (OCF), so readers sniff it
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip",
                   compress_type=zipfile.ZIP_STORED)
        deflate = {"compress_type": zipfile.ZIP_DEFLATED}
        z.writestr("META-INF/container.xml", _CONTAINER, **deflate)
        z.writestr("OEBPS/content.opf", _opf(title, author, lang, ident, bible, files),
                   **deflate)
        z.writestr("OEBPS/nav.xhtml", nav, **deflate)
        z.writestr("OEBPS/toc.ncx", _ncx(title, ident, files), **deflate)
        z.writestr("OEBPS/style.css", _CSS, **deflate)
        for name, _, xhtml in files:
            z.writestr(f"OEBPS/{name}", xhtml, **deflate)
    return out.getvalue()


def _html(p: Para) -> str:
    if p.scene:
        return '<hr class="scene"/>'
    parts = []
    for text, italic, bold in runs(p.text):
        t = escape(text, quote=False)
        t = f"<em>{t}</em>" if italic else t
        parts.append(f"<strong>{t}</strong>" if bold else t)
    return f"<p>{''.join(parts)}</p>"


def _opf(title, author, lang, ident, bible, files) -> str:
    modified = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = [f'<dc:identifier id="bookid">urn:uuid:{ident}</dc:identifier>',
            f"<dc:title>{escape(title)}</dc:title>", f"<dc:language>{escape(lang)}</dc:language>",
            f'<meta property="dcterms:modified">{modified}</meta>']
    if author:
        meta.append(f"<dc:creator>{escape(author)}</dc:creator>")
    if (bible.get("premise") or "").strip():
        meta.append(f"<dc:description>{escape(bible['premise'].strip())}</dc:description>")
    items = ['<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" '
             'properties="nav"/>',
             '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>',
             '<item id="css" href="style.css" media-type="text/css"/>']
    spine = []
    for i, (name, _, _) in enumerate(files):
        items.append(f'<item id="f{i}" href="{name}" media-type="{XHTML_TYPE}"/>')
        spine.append(f'<itemref idref="f{i}"/>')
        if i == 0:  # the contents after the title page
            spine.append('<itemref idref="nav"/>')
    nl = "\n"
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<package xmlns="http://www.idpf.org/'
            f'2007/opf" version="3.0" unique-identifier="bookid" xml:lang="{escape(lang)}">\n'
            f'<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">\n{nl.join(meta)}\n'
            f'</metadata>\n<manifest>\n{nl.join(items)}\n</manifest>\n'
            f'<spine toc="ncx">\n{nl.join(spine)}\n</spine>\n</package>\n')


def _ncx(title, ident, files) -> str:
    """The EPUB 2 table of contents, for older readers."""
    points = "\n".join(
        f'<navPoint id="p{i}" playOrder="{i}"><navLabel><text>{escape(t)}</text></navLabel>'
        f'<content src="{n}"/></navPoint>' for i, (n, t, _) in enumerate(files, 1))
    return ('<?xml version="1.0" encoding="utf-8"?>\n<ncx xmlns="http://www.daisy.org/z3986/'
            f'2005/ncx/" version="2005-1">\n<head><meta name="dtb:uid" content="urn:uuid:'
            f'{ident}"/></head>\n<docTitle><text>{escape(title)}</text></docTitle>\n'
            f"<navMap>\n{points}\n</navMap>\n</ncx>\n")


# -- reading ---------------------------------------------------------------------------
# Algorithms that only obfuscate embedded fonts; anything else in encryption.xml is DRM.
_FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")
_SKIP_TYPES = {"cover", "titlepage", "halftitlepage", "toc", "landmarks", "copyright-page"}
_NS = {"opf": "http://www.idpf.org/2007/opf",
       "c": "urn:oasis:names:tc:opendocument:xmlns:container",
       "enc": "http://www.w3.org/2001/04/xmlenc#", "ncx": "http://www.daisy.org/z3986/2005/ncx/"}


def blocks(data: bytes, name: str) -> list[tuple]:
    """The book's spine as ("file", toc label or None), ("h", level, text) and
    ("p", markdown) blocks; a ProjectError for a DRM-protected or damaged e-book."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise ProjectError(f"{name} is not a valid EPUB (damaged, or not an e-book).") from e
    with z:
        try:
            return _spine_blocks(z, name)
        except ProjectError:
            raise
        except (KeyError, ElementTree.ParseError, UnicodeDecodeError, zipfile.BadZipFile,
                ValueError, OSError) as e:
            raise ProjectError(f"{name} is a damaged EPUB ({e}); convert it again, e.g. "
                               "with Calibre, then import it.") from e


def _spine_blocks(z: zipfile.ZipFile, name: str) -> list[tuple]:
    names = set(z.namelist())
    drm = f"{name} is protected by DRM; Mnemosyne can only import an e-book without DRM."
    if names & {"META-INF/rights.xml", "META-INF/sinf.xml"}:
        raise ProjectError(drm)
    if "META-INF/encryption.xml" in names:
        enc = ElementTree.fromstring(z.read("META-INF/encryption.xml"))
        for method in enc.iter(f"{{{_NS['enc']}}}EncryptionMethod"):
            if method.get("Algorithm") not in _FONT_OBFUSCATION:
                raise ProjectError(drm)
    container = ElementTree.fromstring(z.read("META-INF/container.xml"))
    rootfile = container.find(".//c:rootfile", _NS)
    if rootfile is None:
        raise ProjectError(f"{name} is a damaged EPUB (no package file).")
    opf_path = rootfile.get("full-path")
    opf = ElementTree.fromstring(z.read(opf_path))
    base = dirname(opf_path)
    manifest = {i.get("id"): i for i in opf.iterfind(".//opf:manifest/opf:item", _NS)}
    labels = _toc_labels(z, base, manifest, opf)
    out = []
    for ref in opf.iterfind(".//opf:spine/opf:itemref", _NS):
        item = manifest.get(ref.get("idref"))
        if (item is None or ref.get("linear") == "no" or "nav" in (item.get("properties") or "")
                or item.get("media-type") not in (XHTML_TYPE, "text/html")):
            continue
        path = _resolve(base, item.get("href"))
        parser = _Page()
        parser.feed(z.read(path).decode("utf-8"))
        parser.close()
        if parser.skip:
            continue
        out.append(("file", labels.get(path)))
        out += parser.blocks
    return out


def _resolve(base: str, href: str) -> str:
    return normpath(join(base, unquote(href.split("#")[0])))


def _toc_labels(z, base, manifest, opf) -> dict:
    """{file path: its label in the table of contents} (EPUB 3 nav, else the NCX)."""
    labels: dict = {}
    nav = next((i for i in manifest.values() if "nav" in (i.get("properties") or "")), None)
    if nav is not None:
        page = _Page(links=True)
        page.feed(z.read(_resolve(base, nav.get("href"))).decode("utf-8"))
        page.close()
        nav_dir = dirname(_resolve(base, nav.get("href")))
        for href, label in page.links:
            labels.setdefault(_resolve(nav_dir, href), label)
        return labels
    spine = opf.find(".//opf:spine", _NS)
    ncx = manifest.get(spine.get("toc")) if spine is not None else None
    if ncx is not None:
        root = ElementTree.fromstring(z.read(_resolve(base, ncx.get("href"))))
        ncx_dir = dirname(_resolve(base, ncx.get("href")))
        for point in root.iter(f"{{{_NS['ncx']}}}navPoint"):
            text = point.find("ncx:navLabel/ncx:text", _NS)
            content = point.find("ncx:content", _NS)
            if text is not None and content is not None and (text.text or "").strip():
                labels.setdefault(_resolve(ncx_dir, content.get("src")), text.text.strip())
    return labels


class _Page(HTMLParser):
    """One XHTML file as blocks: headings, paragraphs (emphasis as Markdown), <hr> as a
    scene break; skip: a cover, title page or contents page, and nav, script, style."""
    BLOCK = {"p", "div", "li", "blockquote", "dd", "dt", "pre", "td", "figcaption",
             "section", "article", "body"}
    HIDDEN = {"script", "style", "head", "nav", "aside", "title", "svg"}

    def __init__(self, links: bool = False):
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple] = []
        self.links: list[tuple[str, str]] = []
        self.skip, self._links = False, links
        self._pieces: list[tuple[str, bool, bool]] = []
        self._italic = self._bold = self._hidden = 0
        self._heading: int | None = None
        self._href: str | None = None
        self._label: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if set((a.get("epub:type") or "").split()) & _SKIP_TYPES and tag in ("body", "section"):
            self.skip = True
        if self._links and tag == "a" and a.get("href"):
            self._href, self._label = a["href"], []
            return
        if tag in self.HIDDEN and not self._links:
            self._hidden += 1
        elif tag in ("em", "i", "cite", "var", "dfn"):
            self._italic += 1
        elif tag in ("strong", "b"):
            self._bold += 1
        elif tag in ("br", "hr") or tag in self.BLOCK or tag[:1] == "h" and tag[1:].isdigit():
            self._flush()
            if tag == "hr":
                self.blocks.append(("p", SCENE_BREAK))
            elif tag[:1] == "h" and tag[1:].isdigit():
                self._heading = int(tag[1:])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self._links and tag == "a" and self._href is not None:
            label = " ".join("".join(self._label).split())
            if label:
                self.links.append((self._href, label))
            self._href = None
        elif tag in self.HIDDEN and not self._links:
            self._hidden = max(0, self._hidden - 1)
        elif tag in ("em", "i", "cite", "var", "dfn"):
            self._italic = max(0, self._italic - 1)
        elif tag in ("strong", "b"):
            self._bold = max(0, self._bold - 1)
        elif tag in self.BLOCK or tag[:1] == "h" and tag[1:].isdigit():
            self._flush()

    def handle_data(self, data):
        if self._href is not None:
            self._label.append(data)
        elif not self._hidden:
            self._pieces.append((data, self._italic > 0, self._bold > 0))

    def close(self):
        super().close()
        self._flush()

    def _flush(self):
        pieces, self._pieces = self._pieces, []
        if self._heading is not None:
            text = " ".join("".join(t for t, _, _ in pieces).split())
            if text:
                self.blocks.append(("h", self._heading, text))
            self._heading = None
            return
        text = markdown(pieces)
        if text:
            self.blocks.append(("p", SCENE_BREAK if is_scene_break(text) else text))
