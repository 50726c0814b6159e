"""Prose quality of Continue: prompt leaks, meta-text, repetition, fluency, margin notes and steering.

Each opening (invented ones and chapter openings of Pride and Prejudice, see
prose_openings) is continued as a Continue would: the story bible, a pinned and a
recalled memory and the writer's steering note ("Next: <person> <action>", inline at
the end of the text as the thought book puts it) go through ``context.build``, and
``writer.stream`` writes the passage with fixed seeds. Per setting it reports:

- leak: passages containing a line of the bible, memory or note blocks;
- meta: passages with a heading, a list item, a Q:/A: line or an assistant phrase;
- rep4 / distinct-2: share of repeated word 4-grams, distinct word bigrams;
- fluency: mean log-probability per token of the passage read alone as plain prose;
- notes: share of margin notes (on the passage's first paragraph) naming a character
  or event of it, and share with an assistant phrase;
- steering: share of passages naming the note's person and its action;
- glued: passages with a word glued to a sentence's end ("too.Then"), at the seam
  with the text before or inside.

Openings are split: settings are chosen on the ``tuning`` split, figures are
reported on the ``report`` split, and the output says which split it ran.
A setting is a name (``today``: the engine as it was before issue 15; ``default``:
the engine's defaults now) with optional overrides, e.g.
``default:temperature=0.7;min_p=0.05;frame=raw``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import platform
import re
import statistics
import time

# The engine before issue 15: raw continuation, no refusals, these sampling values, and
# the note prompt of the time (reproduced in _legacy_note).
TODAY = {"frame": "raw", "refuse": False, "min_p": 0.0, "temperature": 0.8, "top_p": 0.95,
         "repetition_penalty": 1.15, "penalty_window": 256, "note": "legacy"}
NOTE_KEYS = ("note", "tries")
CONTEXT_KEYS = ("frame", "open_with_plan")
GLOBAL_KEYS = {"plan_ask": ("context", "PLAN_ASK")}  # module constants a setting may try


def add_arguments(p) -> None:
    p.add_argument("--settings", default="today,default",
                   help="comma-separated settings: today | default, each with optional "
                        "':key=value;key=value' overrides (Sampling fields, frame, note)")
    p.add_argument("--split", choices=("tuning", "report"), default="report",
                   help="tuning: the openings the defaults were chosen on; report: held out")
    p.add_argument("--openings", type=int, default=0, help="use the first N of the split (0: all)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--budget", type=int, default=1024, help="prompt token budget")
    p.add_argument("--no-notes", action="store_true", help="skip the margin notes")
    p.add_argument("--show", type=int, default=0, help="print the first N passages per setting")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--only", default="", help="comma-separated opening names of the split")
    p.add_argument("--rescore", default="",
                   help="comma-separated --out files: merge their passages and measure them "
                        "again with this checkout's checks (no model; fluency is kept)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="also write the JSON (with every passage) here")


# -- the measures (pure functions of text) ------------------------------------------
_WORD = re.compile(r"[A-Za-z0-9']+")
_LINE_META = re.compile(
    r"^\s*(?:#{1,6}\s|\*\*[^*]+\*\*\s*$|(?:chapter|part|book|epilogue|prologue|act|scene)"
    r"\b\s*(?:[0-9ivxlc]+\b|one|two|three|four|five|six|seven|eight|nine|ten|:|$)"
    r"|(?:\d+[.)]|[-*•])\s+\S|(?:q|a|question|answer|user|assistant)\s*:|\[)", re.I)
_FIELD = re.compile(r"^\s*\[?\s*(?:title|premise|style|remember|earlier|note|next)\s*:", re.I)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def repetition(text: str) -> tuple[float, float]:
    """(share of word 4-grams that repeat an earlier one, distinct word bigrams share)."""
    w = words(text)
    grams4 = list(zip(w, w[1:], w[2:], w[3:]))
    grams2 = list(zip(w, w[1:]))
    rep = 1 - len(set(grams4)) / len(grams4) if grams4 else 0.0
    dist = len(set(grams2)) / len(grams2) if grams2 else 0.0
    return rep, dist


_SPEAKER = re.compile(r"^\s*\[?[A-Z][\w'’.\-]*(?: [A-Z][\w'’.\-]*)?:\s")  # "Boy: ", "[Later: "
_NO_WORDS = re.compile(r"^[^A-Za-z]*[0-9\]\[<>|{}=_][^A-Za-z]*$")  # "260", "]", a timestamp


def is_meta(text: str) -> bool:
    """A heading, list item, Q:/A: or speaker-label line, a line of numbers or
    brackets, anywhere; or an assistant phrase anywhere."""
    from ..writer import ASSISTANT

    return (any(_LINE_META.match(line) or _SPEAKER.match(line) or _NO_WORDS.match(line)
                for line in text.splitlines() if line.strip())
            or ASSISTANT.search(text) is not None)


def _norm(text: str) -> str:
    return " ".join(words(text))


def leaks(text: str, block_lines: list[str]) -> bool:
    """A prompt field at a line start, a whole block line, or eight words in a row of
    one, in the passage."""
    if any(_FIELD.match(line) for line in text.splitlines()):
        return True
    body = f" {_norm(text)} "
    for line in block_lines:
        content = _norm(_FIELD.sub("", line.strip().strip("[]")))
        if not content:
            continue
        if f" {content} " in body:
            return True
        w = content.split()
        if any(f" {' '.join(w[i:i + 8])} " in body for i in range(len(w) - 7)):
            return True
    return False


def follows(text: str, person: list[str], action: list[str]) -> bool:
    """The passage names the note's person and one of its action's word stems."""
    low = text.lower()
    return (any(re.search(rf"\b{re.escape(p.lower())}\b", low) for p in person)
            and any(re.search(rf"\b{re.escape(a.lower())}", low) for a in action))


# -- settings -----------------------------------------------------------------------
def _value(v: str):
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v.strip()


def parse_setting(spec: str) -> tuple[str, dict]:
    """'name:key=value;key=value' -> (spec, the whole setting as one dict)."""
    name, _, rest = spec.strip().partition(":")
    if name not in ("today", "default"):
        raise SystemExit(f"error: unknown setting '{name}' (today or default, with "
                         "':key=value;...' overrides)")
    setting = dict(TODAY) if name == "today" else {}
    for item in filter(None, (x.strip() for x in rest.split(";"))):
        key, eq, val = item.partition("=")
        if not eq:
            raise SystemExit(f"error: '{item}' in setting '{spec}' is not key=value")
        setting[key.strip()] = _value(val)
    return spec.strip(), setting


def _split_setting(setting: dict):
    """(context.build kwargs, Sampling kwargs, note kwargs): keys the engine of this
    checkout does not know are left out (so 'today' runs on the engine before the
    change too), unknown names are an error."""
    from .. import context
    from ..writer import Sampling

    build_params = inspect.signature(context.build).parameters
    fields = {f.name for f in dataclasses.fields(Sampling)}
    ctx, samp, note = {}, {}, {}
    for k, v in setting.items():
        if k in GLOBAL_KEYS:
            continue
        if k in NOTE_KEYS:
            note[k] = v
        elif k in CONTEXT_KEYS:
            if k in build_params:
                ctx[k] = v
        elif k in fields:
            samp[k] = v
        elif k not in TODAY:
            raise SystemExit(f"error: unknown setting key '{k}'")
    return ctx, samp, note


# -- the model's side -----------------------------------------------------------------
def fluency(lm, text: str) -> float | None:
    """Mean log-probability per token of ``text`` read alone (its first token given)."""
    import torch

    from ..context import encode

    ids = encode(lm.tokenizer, text.strip())[:512]
    if len(ids) < 2:
        return None
    dev = next(lm.model.parameters()).device
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids], device=dev)).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:], device=dev)[:, None])
    return float(lp.mean())


def _legacy_note(lm, passage: str, bible: dict, seed: int) -> str:
    """The margin note as the engine wrote it before issue 15 (prompt, sampling, tidy)."""
    from ..thoughts import strip
    from ..writer import Result, Sampling, stream

    ask = ("In one or two sentences, note what just happened in this passage, what "
           "must be remembered, and what should come next.")
    msgs = [{"role": "system", "content": "You are a novelist's private notebook. "
                                          f"The novel is '{bible.get('title', '')}'."},
            {"role": "user", "content": f"{passage.strip()[-2000:]}\n\n{ask}"}]
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    else:
        ids = list(tok(f"{msgs[-1]['content']}\nNote:", add_special_tokens=False)["input_ids"])
    res = Result()
    old = {"refuse": False} if "refuse" in {f.name for f in dataclasses.fields(Sampling)} else {}
    for _ in stream(lm, ids, Sampling(temperature=0.3, top_p=0.9, max_new_tokens=48,
                                      seed=seed, **old), result=res):
        pass
    note = strip(res.text).strip()
    if len(note) > 20 and res.stop_reason == "length":
        cut = max(note.rfind(". "), note.rfind(".\n"))
        note = note[:cut + 1] if cut > 20 else note
    return note


def _note(lm, piece: str, bible: dict, seed: int, note_kw: dict) -> str:
    from .. import thoughts

    if note_kw.get("note") == "legacy":
        return _legacy_note(lm, piece, bible, seed)
    params = inspect.signature(thoughts.write_note).parameters
    extra = {k: v for k, v in note_kw.items() if k in params}
    return thoughts.write_note(lm, piece, bible, seed=seed, **extra)


def _about(note: str, paragraph: str, premise: str = "") -> bool:
    from .. import thoughts

    if hasattr(thoughts, "note_is_about"):
        # a name the note was made to start with does not count: its events must match
        lead = thoughts.note_lead(paragraph) or thoughts.note_lead(premise)
        return thoughts.note_is_about(note, paragraph, lead if note.startswith(lead) else "")
    return _names_or_events(note, paragraph)


def _names_or_events(note: str, paragraph: str) -> bool:
    """Fallback for an engine without the check: a shared capitalised name, or two
    shared content words."""
    names = {w for w in re.findall(r"\b[A-Z][a-z]{2,}\b", paragraph)}
    if any(re.search(rf"\b{n}\b", note) for n in names - {"The", "She", "Her", "His"}):
        return True
    stems = {w[:5] for w in words(paragraph) if len(w) >= 5}
    return len({w[:5] for w in words(note) if len(w) >= 5} & stems) >= 2


def run_setting(lm, spec: str, setting: dict, ops: list[dict], seeds: list[int], args,
                log=print) -> dict:
    from .. import context, thoughts, writer

    import importlib

    ctx_kw, samp_kw, note_kw = _split_setting(setting)
    for k, (module, name) in GLOBAL_KEYS.items():
        if k in setting:  # e.g. plan_ask={ask} In the next paragraph, {plan}.
            setattr(importlib.import_module(f"engine.{module}"), name, setting[k])
    rows, t0 = [], time.perf_counter()
    for op in ops:
        bible = {"title": op["title"], "premise": op["premise"], "style": op["style"]}
        tail = thoughts.with_thoughts(op["text"], [thoughts.Thought(len(op["text"]),
                                                                    op["next"])])
        pins = [(context.Receipt.quote(op["pin"]), op["pin"])]
        recalled = [("Chapter 0", op["recalled"], "similar 0.80")]
        ids, receipt = context.build(lm.tokenizer, args.budget, bible, tail,
                                     chapter_heading=op["heading"], pins=pins,
                                     recalled=recalled, **ctx_kw)
        block_lines = [line for b in (context.bible_text(bible), op["pin"], op["recalled"],
                                      op["next"]) for line in b.splitlines() if line.strip()]
        for seed in seeds:
            res = writer.Result()
            s = writer.Sampling(max_new_tokens=args.new_tokens, seed=seed, **samp_kw)
            opening = {"opening": receipt.opening} if getattr(receipt, "opening", "") else {}
            for _ in writer.stream(lm, ids, s, result=res, **opening):
                pass
            prose = thoughts.strip(res.text)
            row = {"opening": op["name"], "seed": seed, "text": prose,
                   "stop": res.stop_reason, "tokens": res.new_tokens,
                   "fluency": fluency(lm, prose)}
            if not args.no_notes:
                piece = note_piece(prose)
                row.update(piece=piece, note=_note(lm, piece, bible, seed, note_kw)
                           if piece.strip() else "")
            rows.append(measure(row, op))
        log(f"  {spec} · {op['name']} done ({time.perf_counter() - t0:.0f} s)")
    return summarise(rows, time.perf_counter() - t0)


def _block_lines(op: dict) -> list[str]:
    from .. import context

    bible = {"title": op["title"], "premise": op["premise"], "style": op["style"]}
    return [line for b in (context.bible_text(bible), op["pin"], op["recalled"], op["next"])
            for line in b.splitlines() if line.strip()]


def note_piece(prose: str) -> str:
    """What the engine would write the first margin note on: the first paragraph."""
    from .. import thoughts

    points = thoughts.note_points(prose, "paragraph") if prose.strip() else []
    return prose[:points[0]] if points else prose


def measure(row: dict, op: dict) -> dict:
    """The text measures of one passage (and its note), from its text alone."""
    prose = row["text"]
    rep, dist = repetition(prose)
    row.update(leak=leaks(prose, _block_lines(op)), meta=is_meta(prose), rep4=rep,
               distinct2=dist, steer=follows(prose, op["person"], op["action"]))
    row["glued"] = bool(_GLUED.search(op["text"][-12:] + prose))
    if "note" in row:
        note, piece = row["note"], row.get("piece") or note_piece(prose)
        row.update(note_about=bool(note) and _about(note, piece, op["premise"]),
                   note_assistant=bool(note) and _assistant_note(note),
                   note_empty=not note)
    return row


_GLUED = re.compile(r"[a-z]{2}[.!?;:,][\"”’]?[A-Za-z]")  # "too.Then", as the page shows it


def _assistant_note(note: str) -> bool:
    from .. import thoughts
    from ..writer import ASSISTANT

    if hasattr(thoughts, "is_review"):
        return thoughts.is_review(note)
    return bool(ASSISTANT.search(note))


def rescore(paths: list[str]) -> dict:
    """{setting: summary} of the passages in --out files, measured again."""
    from .prose_openings import openings

    ops = {o["name"]: o for split in openings().values() for o in split}
    merged: dict[str, list] = {}
    meta = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        meta = {k: data[k] for k in ("model", "split", "new_tokens")}
        for spec, r in data["results"].items():
            merged.setdefault(spec, []).extend(measure(row, ops[row["opening"]])
                                               for row in r["rows"])
    return {**meta, "results": {spec: summarise(rows) for spec, rows in merged.items()}}


def _share(rows, key) -> float:
    vals = [bool(r[key]) for r in rows if key in r]
    return round(100 * sum(vals) / len(vals), 1) if vals else float("nan")


def summarise(rows: list[dict], seconds: float = 0.0) -> dict:
    flu = [r["fluency"] for r in rows if r["fluency"] is not None]
    return {"passages": len(rows), "leak_pct": _share(rows, "leak"),
            "meta_pct": _share(rows, "meta"),
            "rep4_pct": round(100 * statistics.fmean(r["rep4"] for r in rows), 1) if rows else 0,
            "distinct2": round(statistics.fmean(r["distinct2"] for r in rows), 3) if rows else 0,
            "fluency": round(statistics.fmean(flu), 3) if flu else float("nan"),
            "notes_about_pct": _share(rows, "note_about"),
            "notes_assistant_pct": _share(rows, "note_assistant"),
            "notes_none_pct": _share(rows, "note_empty"),
            "steer_pct": _share(rows, "steer"), "glued_pct": _share(rows, "glued"),
            "mean_tokens": round(statistics.fmean(r["tokens"] for r in rows), 1) if rows else 0,
            "seconds": round(seconds, 1), "rows": rows}


COLUMNS = [("leak %", "leak_pct"), ("meta %", "meta_pct"), ("rep4 %", "rep4_pct"),
           ("dist-2", "distinct2"), ("fluency", "fluency"), ("notes about %", "notes_about_pct"),
           ("notes asst %", "notes_assistant_pct"), ("no note %", "notes_none_pct"),
           ("steer %", "steer_pct"), ("glued %", "glued_pct"),
           ("tokens", "mean_tokens")]


def _table(results: dict) -> None:
    width = max(len(s) for s in results) + 2
    print("setting".ljust(width) + "  ".join(h.rjust(max(7, len(h))) for h, _ in COLUMNS))
    for spec, r in results.items():
        print(spec.ljust(width) + "  ".join(str(r[k]).rjust(max(7, len(h)))
                                              for h, k in COLUMNS))


def run(args) -> int:
    if args.rescore:
        out = rescore([p for p in args.rescore.split(",") if p.strip()])
        if args.json:
            print(json.dumps(out, indent=1))
        else:
            print(f"rescored · {out['model']} · split: {out['split']}")
            _table(out["results"])
        return 0
    import torch

    from ..models import load
    from .prose_openings import openings

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ops = openings()[args.split]
    ops = ops[:args.openings] if args.openings > 0 else ops
    if args.only:
        ops = [o for o in ops if o["name"] in args.only.split(",")]
    seeds = list(range(args.seed, args.seed + args.seeds))
    settings = [parse_setting(s) for s in args.settings.split(",") if s.strip()]
    for _, setting in settings:
        _split_setting(setting)  # unknown keys fail before the model loads
    lm = load(getattr(args, "model", None))
    log = (lambda *_: None) if args.json else print
    what = ("tuning split (the openings the defaults were chosen on)" if args.split == "tuning"
            else "report split (held out: not used to choose the defaults)")
    log(f"bench prose · {lm.name} · {what}: {', '.join(o['name'] for o in ops)} · seeds "
        f"{seeds[0]}..{seeds[-1]} · {args.new_tokens} new tokens")
    results = {}
    for spec, setting in settings:
        results[spec] = run_setting(lm, spec, setting, ops, seeds, args, log)
    out = {"model": lm.name, "split": args.split, "openings": [o["name"] for o in ops],
           "seeds": seeds, "new_tokens": args.new_tokens, "machine": platform.machine(),
           "seconds": round(time.perf_counter() - t0, 1), "results": results}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"\nsplit: {args.split} · {len(ops)} openings × {len(seeds)} seeds")
    _table(results)
    for spec, r in results.items():
        for row in r["rows"][:args.show]:
            print(f"\n--- {spec} · {row['opening']} · seed {row['seed']} · "
                  f"stop {row['stop']}\n{row['text']}")
            if row.get("note") is not None:
                print(f"[note: {row['note']}]")
    return 0


if __name__ == "__main__":  # before the bench is registered in the CLI
    import argparse

    ap = argparse.ArgumentParser(prog="bench prose")
    ap.add_argument("--model", default=None)
    add_arguments(ap)
    raise SystemExit(run(ap.parse_args()))
