// Mnemosyne in the browser: the chapter editor follows new text, and the action bar
// has keyboard shortcuts. Loaded once through the page head (launch.py); it reads only
// the page's own element ids (#editor, #continue, #stop, #retry), no Gradio internals.
(() => {
  if (window.__mnemosyneEditor) return;
  window.__mnemosyneEditor = true;

  const NEAR_END = 48;   // px from the end that still count as "at the end"
  const POLL_MS = 120;   // Gradio sets the textarea's value property: no DOM mutation to watch
  const state = new WeakMap();

  const atEnd = (ta) => ta.scrollHeight - ta.scrollTop - ta.clientHeight <= NEAR_END;

  function toEnd(ta, s) {
    ta.scrollTop = ta.scrollHeight;
    s.autoTop = ta.scrollTop;
    // Gradio resizes the box after it sets a value: follow once more after that.
    requestAnimationFrame(() => {
      if (s.pinned) { ta.scrollTop = ta.scrollHeight; s.autoTop = ta.scrollTop; }
    });
  }

  function track(ta) {
    const s = { value: ta.value, pinned: true, autoTop: 0 };
    state.set(ta, s);
    ta.addEventListener("scroll", () => {
      if (atEnd(ta)) s.pinned = true;                    // back at the end: follow again
      else if (ta.scrollTop < s.autoTop - 4) s.pinned = false;  // scrolled up on purpose
    }, { passive: true });
    // The writer's own typing: the caret keeps itself in view; nothing to follow.
    ta.addEventListener("input", () => { s.value = ta.value; });
    toEnd(ta, s);
    return s;
  }

  const HINTS = { "#continue": "Continue (Ctrl+Enter)", "#stop": "Stop (Esc)" };

  function follow() {
    for (const [sel, hint] of Object.entries(HINTS)) {
      const b = document.querySelector(sel);
      if (b && !b.title) b.title = hint;
    }
    const ta = document.querySelector("#editor textarea");
    if (!ta) return;
    const s = state.get(ta) || track(ta);
    const v = ta.value;
    if (v === s.value) return;
    const grew = s.value.length > 0 && v.startsWith(s.value);
    s.value = v;
    if (!grew) s.pinned = true;  // another chapter, an undo, a retry: show where it ends
    if (s.pinned) toEnd(ta, s);
  }

  setInterval(follow, POLL_MS);

  // -- shortcuts: Ctrl+Enter (Cmd+Enter) continues, Esc stops a running Continue --------
  let startedAt = 0;
  document.addEventListener("click", (e) => {
    if (e.target instanceof Element && e.target.closest("#continue, #retry")) {
      startedAt = Date.now();
    }
  }, true);

  function writing() {
    const ta = document.querySelector("#editor textarea");
    // The editor is read-only while the model writes; the moment before its first
    // token counts too.
    return (ta && ta.disabled) || Date.now() - startedAt < 1500;
  }

  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.shiftKey && !e.altKey) {
      const button = document.querySelector("#continue");
      if (!button || button.disabled) return;
      e.preventDefault();
      // Leave the field first, as a click would: its blur saves what was just typed.
      const active = document.activeElement;
      const inNote = active instanceof Element && active.closest("#thoughts-list");
      if (active instanceof HTMLElement) active.blur();
      // A margin note's edit goes out first (assets/page.js sends it within ~100 ms):
      // once the model writes, notes wait.
      if (inNote) setTimeout(() => button.click(), 600); else button.click();
    } else if (e.key === "Escape" && !e.repeat && writing()) {
      const button = document.querySelector("#stop");
      if (!button) return;
      e.preventDefault();
      button.click();
    }
  }, true);
})();
