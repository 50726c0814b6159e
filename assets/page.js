// The manuscript page (issue 21), run by the margin's gr.HTML (js_on_load, `element` is
// the margin). The chapter's textarea stays the editing surface: typing, paste, undo
// and the autosave are the browser's and app/writing_panel.py's. This script draws
//   - the margin notes beside the paragraph each belongs to, positioned at the
//     paragraph's offset measured in a mirror of the textarea, editable in place;
//   - the model's last passage, marked in that mirror behind the (transparent) text;
//   - the side panels' drawer below 1280 px.
// It reads #page-data (JSON from app/page.py) and sends the margin's commands through
// #note-cmd and the hidden #note-apply button. Nothing runs on a keystroke but a flag:
// the mirror is rebuilt once the writer pauses.
(() => {
  if (window.__mnemosynePageOff) return;  // (measuring the page without it)
  const P = window.__mnemosynePage || (window.__mnemosynePage = {});
  P.root = element;
  if (P.started) { P.dirty = true; return; }
  P.started = true;

  const POLL_MS = 150, IDLE_MS = 300, GAP = 6;
  const $ = (s) => document.querySelector(s);
  const box = (id) => $(`#${id} textarea, #${id} input`);
  Object.assign(P, { data: null, raw: null, notes: [], text: null, mark: null,
                     streamFrom: null, changedAt: 0, dirty: true, els: new Map(),
                     caret: 0, drafting: false });

  // -- anchors move with the writer's edits (as engine/thoughts.py reanchor does) ----
  function reanchor(old, now, a) {
    if (old === now) return a;
    let pre = 0; const lim = Math.min(old.length, now.length);
    while (pre < lim && old.charCodeAt(pre) === now.charCodeAt(pre)) pre++;
    let suf = 0;
    while (suf < lim - pre && old.charCodeAt(old.length - 1 - suf) ===
           now.charCodeAt(now.length - 1 - suf)) suf++;
    if (a <= pre) return a;
    if (a >= old.length - suf) return a + now.length - old.length;
    return now.length - suf;  // inside the replaced stretch: its end
  }

  // The paragraph a note belongs to: the one its anchor ends (notes follow paragraphs).
  function paraStart(text, anchor) {
    let b = Math.max(0, Math.min(anchor, text.length));
    while (b > 0 && /\s/.test(text[b - 1])) b--;
    return b === 0 ? 0 : text.lastIndexOf("\n", b - 1) + 1;
  }
  function paraEnd(text, at) {
    const i = text.indexOf("\n", at);
    return i < 0 ? text.length : i;
  }

  // -- the mirror: same box, font and wrapping as the textarea, behind it ---------------
  const COPY = ["fontFamily", "fontSize", "fontWeight", "fontStyle", "lineHeight",
                "letterSpacing", "wordSpacing", "textIndent", "tabSize", "paddingTop",
                "paddingRight", "paddingBottom", "paddingLeft", "borderTopWidth",
                "borderRightWidth", "borderBottomWidth", "borderLeftWidth", "textTransform",
                "borderTopLeftRadius", "borderTopRightRadius", "borderBottomLeftRadius",
                "borderBottomRightRadius"];
  function mirrorFor(ta) {
    let m = P.mirror;
    if (!m || !m.isConnected || m.nextSibling !== ta) {
      m = document.createElement("div");
      m.className = "mg-mirror";
      m.setAttribute("aria-hidden", "true");
      ta.parentElement.insertBefore(m, ta);
      ta.parentElement.classList.add("mg-host");
      ta.classList.add("mg-over");
      P.mirror = m; P.mirrorText = null; P.lines = null;
      ta.addEventListener("scroll", () => place(ta), { passive: true });
      ta.addEventListener("input", () => {  // the writer's edit: the mark goes
        P.changedAt = Date.now();
        if (P.mark) { P.mark = null; m.classList.add("mg-unmarked"); }
      });
      const caret = () => { P.caret = ta.selectionStart; P.dirty = true; };
      ta.addEventListener("click", caret);
      ta.addEventListener("keyup", caret);
      ta.addEventListener("focus", caret);
    }
    const cs = getComputedStyle(ta);
    for (const k of COPY) m.style[k] = cs[k];
    m.style.left = ta.offsetLeft + "px";
    m.style.top = ta.offsetTop + "px";
    m.style.width = ta.clientWidth + parseFloat(cs.borderLeftWidth) +
                    parseFloat(cs.borderRightWidth) + "px";
    m.style.height = ta.clientHeight + parseFloat(cs.borderTopWidth) +
                     parseFloat(cs.borderBottomWidth) + "px";
    return m;
  }

  // The mirror holds one block per line of the text, so an edit re-lays only the lines
  // it changed (a whole-text mirror of a long chapter took ~200 ms a pass). A line's
  // offsetTop is where the textarea shows it: the same width, font and line height.
  function lineOf(starts, offset) {  // the index of the line holding offset
    let lo = 0, hi = starts.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (starts[mid] <= offset) lo = mid; else hi = mid - 1; }
    return lo;
  }
  const lineEl = (s) => { const d = document.createElement("div"); d.textContent = s || "\u200b"; return d; };

  function syncMirror(m, text) {
    const lines = text.split("\n");
    let old = P.lines, els = P.lineEls;
    if (!old || !els || els.length !== old.length || (els.length && els[0].parentElement !== m)) {
      els = lines.map(lineEl);
      m.replaceChildren(...els);
    } else {
      let pre = 0;
      while (pre < old.length && pre < lines.length && old[pre] === lines[pre]) pre++;
      let suf = 0;
      while (suf < old.length - pre && suf < lines.length - pre &&
             old[old.length - 1 - suf] === lines[lines.length - 1 - suf]) suf++;
      const fresh = lines.slice(pre, lines.length - suf).map(lineEl);
      const after = els[old.length - suf] || null;
      for (let i = pre; i < old.length - suf; i++) els[i].remove();
      const frag = document.createDocumentFragment();
      for (const d of fresh) frag.appendChild(d);
      m.insertBefore(frag, after);
      els = els.slice(0, pre).concat(fresh, els.slice(old.length - suf));
      P.marked = (P.marked || []).filter((i) => i < pre || i >= old.length - suf)
        .map((i) => (i >= old.length - suf ? i + lines.length - old.length : i));
    }
    const starts = new Array(lines.length);
    let at = 0;
    for (let i = 0; i < lines.length; i++) { starts[i] = at; at += lines[i].length + 1; }
    P.lines = lines; P.lineEls = els; P.starts = starts;
  }

  // Mark [start, end) of the text: the lines it covers get a <mark> around their part.
  function markMirror(mark) {
    const key = mark ? mark.join(",") + "|" + P.lines.length : "";
    if (key === P.markKey) return;
    for (const i of P.marked || []) if (P.lineEls[i]) P.lineEls[i].textContent = P.lines[i] || "\u200b";
    P.marked = [];
    P.markKey = key;
    if (!mark) return;
    const first = lineOf(P.starts, mark[0]), last = lineOf(P.starts, Math.max(mark[0], mark[1] - 1));
    for (let i = first; i <= last; i++) {
      const line = P.lines[i], s = Math.max(0, mark[0] - P.starts[i]),
            e = Math.min(line.length, mark[1] - P.starts[i]);
      if (e <= s) continue;
      const el = P.lineEls[i], hl = document.createElement("mark");
      hl.className = "mg-model";
      hl.textContent = line.slice(s, e);
      el.replaceChildren(document.createTextNode(line.slice(0, s)), hl,
                         document.createTextNode(line.slice(e)));
      P.marked.push(i);
    }
  }

  // -- the margin --------------------------------------------------------------------------
  function layer() {
    let L = P.layer;
    if (!L || !L.isConnected || L.parentElement !== P.root) {
      P.root.replaceChildren();
      P.root.style.position = "relative";  // the layer is placed from the root's own box
      L = document.createElement("div");
      L.className = "mg-layer";
      L.innerHTML = '<div class="mg-track"></div><p class="mg-empty"></p>';
      P.root.appendChild(L);
      P.layer = L; P.els = new Map();
      const add = document.createElement("button");
      add.type = "button"; add.className = "mg-add"; add.textContent = "+ Note";
      add.title = "Write your own note beside this paragraph";
      add.addEventListener("mousedown", (e) => e.preventDefault());  // keep the caret
      add.addEventListener("click", draft);
      L.querySelector(".mg-track").appendChild(add);
      P.addBtn = add;
    }
    return L;
  }

  function noteEl(n) {
    let el = P.els.get(n.id);
    if (!el) {
      el = document.createElement("div");
      el.className = "mg-note";
      el.dataset.id = n.id;
      el.setAttribute("role", "note");
      el.innerHTML = '<div class="mg-head"><span class="mg-who"></span>' +
        '<button type="button" class="mg-del" title="Delete this note">Delete</button></div>' +
        '<div class="mg-text" contenteditable="plaintext-only" spellcheck="true" ' +
        'aria-label="Margin note: Enter saves, Esc leaves it as it was"></div>';
      const t = el.querySelector(".mg-text");
      t.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.ctrlKey && !e.metaKey) {
          e.preventDefault(); t.blur();
        } else if (e.key === "Escape") {
          e.preventDefault(); e.stopPropagation(); t.textContent = el._text; t.blur();
        }
      });
      t.addEventListener("blur", () => {
        const v = t.textContent.trim();
        if (!v) { t.textContent = el._text; return; }
        if (v !== el._text) { el._text = v; send({ op: "edit", id: n.id, text: v }); }
      });
      el.querySelector(".mg-del").addEventListener("click", () => {
        el.classList.add("mg-going");
        send({ op: "delete", id: n.id });
      });
      P.els.set(n.id, el);
    }
    const t = el.querySelector(".mg-text");
    if (document.activeElement !== t && el._text !== n.text) { t.textContent = n.text; el._text = n.text; }
    el.classList.toggle("mg-writer", n.author !== "model");
    el.querySelector(".mg-who").textContent =
      n.author === "model" ? "💭 The model's note" : "💭 Your note";
    return el;
  }

  function draft() {
    const ta = $("#editor textarea");
    if (!ta || ta.disabled || P.drafting) return;
    const text = ta.value, end = paraEnd(text, Math.min(P.caret, text.length));
    const el = document.createElement("div");
    el.className = "mg-note mg-writer mg-draft";
    el.innerHTML = '<div class="mg-head"><span class="mg-who">💭 Your note</span></div>' +
      '<div class="mg-text" contenteditable="plaintext-only" spellcheck="true" ' +
        'aria-label="Margin note: Enter saves, Esc leaves it as it was"></div>';
    el._draft = true; el._anchor = end; el._start = paraStart(text, end);
    const t = el.querySelector(".mg-text");
    t.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.ctrlKey && !e.metaKey) { e.preventDefault(); t.blur(); }
      else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); t.textContent = ""; t.blur(); }
    });
    t.addEventListener("blur", () => {
      const v = t.textContent.trim();
      el.remove(); P.drafting = false; P.draftEl = null; P.dirty = true;
      if (v) send({ op: "add", anchor: el._anchor, text: v });
    });
    P.drafting = true; P.draftEl = el;
    layer().querySelector(".mg-track").appendChild(el);
    P.dirty = true; layout(true);
    t.focus();
  }

  let queue = Promise.resolve();
  function send(cmd) {
    cmd.cid = P.data ? P.data.cid : null;
    queue = queue.then(() => new Promise((done) => {
      const b = box("note-cmd"), btn = $("#note-apply");
      if (!b || !btn) return done();
      b.value = JSON.stringify(cmd);
      b.dispatchEvent(new Event("input", { bubbles: true }));
      setTimeout(() => { btn.click(); setTimeout(done, 400); }, 80);
    }));
  }

  // -- drawing -----------------------------------------------------------------------------
  function shown() {
    const c = $("#thoughts-show input");
    return !c || c.checked;
  }

  function place(ta) {
    const m = P.mirror;
    if (m) m.scrollTop = ta.scrollTop;
    if (P.layer) P.layer.querySelector(".mg-track").style.transform =
      `translateY(${-ta.scrollTop}px)`;
  }

  function layout(force) {
    const ta = $("#editor textarea");
    if (!ta || !P.root) return;
    const L = layer(), m = mirrorFor(ta), text = ta.value;
    if (P.text !== null && P.text !== text) {
      for (const n of P.notes) n.anchor = reanchor(P.text, text, n.anchor);
    }
    P.text = text;
    const on = shown();
    const notes = on ? P.notes : [];
    let mark = P.mark;
    if (ta.disabled && P.streamFrom !== null) mark = [Math.min(P.streamFrom, text.length), text.length];
    if (mark && (mark[1] > text.length || mark[0] >= mark[1])) mark = null;
    if (force || P.mirrorText !== text || !P.lineEls ||
        (P.lineEls.length && P.lineEls[0].parentElement !== m)) {
      if (force) P.lines = null;
      syncMirror(m, text);
      P.mirrorText = text;
      P.markKey = null;
    }
    markMirror(mark);
    m.classList.toggle("mg-unmarked", !mark);
    const starts = notes.map((n) => paraStart(text, n.anchor));
    const caretStart = paraStart(text, paraEnd(text, Math.min(P.caret, text.length)));
    // the layer spans the textarea's box, scrolled with it
    const top = ta.getBoundingClientRect().top - P.root.getBoundingClientRect().top;
    L.style.top = top + "px";
    L.style.height = ta.clientHeight + "px";
    const track = L.querySelector(".mg-track");
    const empty = L.querySelector(".mg-empty");
    empty.textContent = !on ? "Margin notes are hidden." :
      (P.notes.length ? "" : "No notes yet: they appear beside their paragraphs after " +
                              "each Continue, or add your own.");
    const keep = new Set();
    let floor = 0;
    const y = (o) => P.lineEls[lineOf(P.starts, o)].offsetTop;
    // reads first, then writes: one layout for the whole margin, however many notes
    const placed = notes.map((n, i) => ({ n, top: y(starts[i]), el: noteEl(n) }))
      .sort((a, b) => a.top - b.top || a.n.anchor - b.n.anchor);
    for (const p of placed) if (p.el.parentElement !== track) track.appendChild(p.el);
    for (const p of placed) p.h = p.el.offsetHeight;
    for (const p of placed) {
      const want = Math.max(p.top, floor);
      p.el.style.top = want + "px";
      p.at = want;
      floor = want + p.h + GAP;
      keep.add(p.el);
    }
    for (const [id, el] of P.els) if (!keep.has(el)) { el.remove(); P.els.delete(id); }
    if (P.draftEl) P.draftEl.style.top = y(P.draftEl._start) + "px";
    const add = P.addBtn;
    add.hidden = !on || ta.disabled || !P.data || P.data.cid === null || P.drafting;
    let addAt = y(caretStart);  // below any note that stands where it would
    for (const p of placed) if (addAt + 20 > p.at && addAt < p.at + p.h) addAt = p.at + p.h + 2;
    add.style.top = addAt + "px";
    place(ta);
  }

  function poll() {
    const ta = $("#editor textarea");
    const d = box("page-data");
    if (d && d.value !== P.raw) {
      P.raw = d.value;
      try {
        const data = JSON.parse(d.value);
        // The anchors are in the text as the server saw it. When the writer has typed
        // since (the lengths differ), the notes it knows keep the anchors moved here
        // (in P.text, which the next drawing carries on to what the textarea shows).
        const sameText = ta && data.length === ta.value.length;
        const local = new Map(P.notes.map((n) => [n.id, n.anchor]));
        const moved = P.data && P.data.cid === data.cid && !sameText && P.text !== null;
        P.notes = data.notes.map((n) => ({ ...n,
          anchor: moved && local.has(n.id) ? local.get(n.id) : n.anchor }));
        P.mark = sameText ? data.mark : (moved ? P.mark : null);
        P.data = data;
        if (ta && !moved) P.text = ta.value;
        P.dirty = true;
      } catch (e) { /* not JSON yet */ }
    }
    if (!ta) return;
    if (ta.disabled) {
      if (P.streamFrom === null) { P.streamFrom = ta.value.length; P.mark = null; }
      P.streamFrom = Math.min(P.streamFrom, ta.value.length);
    } else if (P.streamFrom !== null) {
      P.streamFrom = null; P.dirty = true;
    }
    const on = shown();
    if (on !== P.on) { P.on = on; P.dirty = true; }
    // Nothing is drawn while the writer types: the margin follows once they pause.
    const typing = !ta.disabled && Date.now() - P.changedAt < IDLE_MS;
    if (typing) return;
    if (ta.value !== P.text) P.dirty = true;
    const sig = ta.clientWidth + "x" + ta.clientHeight;
    if (sig !== P.sig) { P.sig = sig; P.dirty = false; layout(true); return; }
    if (P.dirty) { P.dirty = false; layout(false); }  // a note being edited keeps its element
  }

  // -- the drawer: the side panels slide in below 1280 px --------------------------------
  function drawer() {
    if ($("#drawer-toggle")) return;
    const b = document.createElement("button");
    b.id = "drawer-toggle"; b.type = "button"; b.textContent = "☰ Panels";
    b.title = "Memories, long memory, matrix, sampling, receipt";
    const desk = () => $("#desk");
    const open = (on) => {
      if (!desk()) return;
      desk().classList.toggle("drawer-open", on);
      b.classList.toggle("open", on);
      b.textContent = on ? "✕ Close panels" : "☰ Panels";
    };
    b.addEventListener("click", () => open(!b.classList.contains("open")));
    // inside Gradio's .contain: the app's CSS is scoped to it
    ($(".gradio-container .contain") || document.body).appendChild(b);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && b.classList.contains("open") &&
          !(e.target instanceof Element && e.target.closest("#side-panels input, #side-panels textarea"))) {
        open(false);
      }
    });
  }

  drawer();
  setInterval(poll, POLL_MS);
  window.addEventListener("resize", () => { P.dirty = true; });
})();
