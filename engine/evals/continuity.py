"""Continuity: do pinned and recalled facts come back far outside the window? And recall latency.

A novel states invented facts in its first chapter, then runs on for tens of thousands
of tokens (Pride and Prejudice as filler). Each probe ends the manuscript with a cue whose
right continuation needs one fact ("...the village of" -> "Pellmarsh"). With the same
prompt budget, four conditions: nothing, pins, semantic recall, pins + recall. Per
condition: how often the fact is in the prompt at all, how often the model ranks the right
answer above three distractors (summed log-probabilities), and how often greedy decoding
writes it. Then the recall path of one Continue (query embedding, FAISS search,
association tiers, text fetch, prompt assembly) timed at 10k and 100k memories.
"""
from __future__ import annotations

import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

# (fact as the book states it, cue, right answer, distractors)
FACTS = [
    ("Elena's eyes were grey, the cold grey of wet slate.",
     "Elena looked up at him, and her eyes were", " grey", [" blue", " green", " brown"]),
    ("Elena's dog was a shaggy wolfhound named Biscuit.",
     "Elena whistled, and the wolfhound came running. The dog's name was",
     " Biscuit", [" Max", " Rex", " Bella"]),
    ("Captain Harrow's ship was called the Morning Gull.",
     "Captain Harrow stood on the deck of his ship, the", " Morning Gull",
     [" Black Pearl", " Sea Witch", " Silver Star"]),
    ("The old keeper of the lighthouse was named Abel Crane.",
     "The old keeper of the lighthouse, Abel", " Crane", [" Smith", " Stone", " Hart"]),
    ("The fishing village below the cliffs was called Pellmarsh.",
     "They walked down the cliffs to the fishing village of", " Pellmarsh",
     [" Ashford", " Dunmore", " Kelby"]),
    ("Elena's brother Tomas lived in the capital city, Varn.",
     "Elena wrote a letter to her brother Tomas in the capital city of", " Varn",
     [" Paris", " London", " Rome"]),
    ("The key to the tower was hidden under the blue stone by the well.",
     "The key to the tower was hidden under the", " blue stone",
     [" red stone", " old mat", " loose brick"]),
    ("Elena's mother had been a violinist in the city orchestra.",
     "Elena's mother had been a", " violinist", [" teacher", " nurse", " baker"]),
]
CONDITIONS = {"none": (False, False), "pins": (True, False), "recall": (False, True),
              "pins+recall": (True, True)}


def add_arguments(p) -> None:
    p.add_argument("--budget", type=int, default=512, help="prompt token budget")
    p.add_argument("--filler-chapters", type=int, default=12,
                   help="chapters of filler between the facts and the probes")
    p.add_argument("--facts", type=int, default=len(FACTS))
    p.add_argument("--gen-tokens", type=int, default=8)
    p.add_argument("--sizes", default="10000,100000", help="memory counts for the latency part")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")


def _filler(n: int) -> list[str]:
    try:
        from ._book import chapters
        return chapters()[:n]
    except Exception:  # noqa: BLE001 - any text will do as filler
        return [("The weather held fair and the family walked out to the village and back, "
                 "talking of the ball and of nothing in particular. ") * 60] * n


def _answer_stats(lm, ids: list[int], answer: str, distractors: list[str], gen_tokens: int):
    """(answer ranked first, margin in nats, greedy continuation) for one prompt."""
    import torch

    tok, model = lm.tokenizer, lm.model
    dev = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.tensor([ids], device=dev), use_cache=True)
        last, cache = out.logits[0, -1].float(), out.past_key_values

        def logp(text: str) -> float:
            cand = tok(text, add_special_tokens=False)["input_ids"]
            total = float(torch.log_softmax(last, -1)[cand[0]])
            if len(cand) > 1:
                o = model(torch.tensor([cand[:-1]], device=dev),
                          past_key_values=copy.deepcopy(cache), use_cache=True)
                lp = torch.log_softmax(o.logits[0].float(), -1)
                total += float(sum(lp[i, c] for i, c in enumerate(cand[1:])))
            return total

        scores = [logp(answer)] + [logp(d) for d in distractors]
        gen, nxt, c = [], int(last.argmax()), copy.deepcopy(cache)
        for _ in range(gen_tokens):
            if nxt in lm.eos_ids:
                break
            gen.append(nxt)
            o = model(torch.tensor([[nxt]], device=dev), past_key_values=c, use_cache=True)
            c, nxt = o.past_key_values, int(o.logits[0, -1].argmax())
    return (scores[0] > max(scores[1:]), scores[0] - max(scores[1:]),
            tok.decode(gen, skip_special_tokens=True))


def continuity(lm, slot, args) -> dict:
    from ..novel import Novel

    facts = FACTS[: args.facts]
    filler = _filler(args.filler_chapters + 2)  # the last one only bridges to each cue
    root = Path(tempfile.mkdtemp(prefix="continuity-"))
    novel = Novel.create(root / "book", "The Lighthouse",
                         "A keeper's daughter grows up on a wild coast.", "Plain, close third "
                         "person.", model=slot)
    paras = filler[0].split("\n\n")
    step = max(1, len(paras) // (len(facts) + 1))
    opening = []
    for i, para in enumerate(paras):
        opening.append(para)
        if i % step == step - 1 and (i // step) < len(facts):
            opening.append(facts[i // step][0])
    novel.store.add_chapter("The coast", "\n\n".join(opening), action="import")
    for j, text in enumerate(filler[1:-1], 2):
        novel.store.add_chapter(f"Chapter {j}", text, action="import")
    probe = novel.chapters.add("Now", "")
    book_tokens = sum(len(lm.tokenizer(c["text"] or "", add_special_tokens=False)["input_ids"])
                      for c in novel.store.chapters())
    bridge = filler[-1].split("\n\n")[-1][-600:]
    results, rows = {}, []
    t0 = time.perf_counter()
    novel.memories.semantic.sync()
    index_s = time.perf_counter() - t0
    for cond, (pinned, recall) in CONDITIONS.items():
        novel.store.memories.clear()
        if pinned:
            for fact, *_ in facts:
                novel.memories.add(fact, pin=True)
        novel.memories.set_settings(enabled=recall)
        in_ctx = ranked = generated = 0
        margins = []
        for fact, cue, answer, distractors in facts:
            ids, receipt = novel.build_context(probe, args.budget, bridge + "\n\n" + cue)
            prompt = lm.tokenizer.decode(ids)
            present = fact in prompt or any(fact in b["text"] for b in receipt["blocks"])
            first, margin, gen = _answer_stats(lm, ids, answer, distractors, args.gen_tokens)
            hit = answer.strip().lower() in gen.lower()
            in_ctx, ranked, generated = in_ctx + present, ranked + first, generated + hit
            margins.append(margin)
            rows.append({"condition": cond, "answer": answer.strip(), "in_context": present,
                         "ranked_first": bool(first), "margin": round(margin, 2),
                         "greedy": gen, "prompt_tokens": len(ids)})
        n = len(facts)
        results[cond] = {"fact_in_prompt": f"{in_ctx}/{n}", "answer_ranked_first": f"{ranked}/{n}",
                         "greedy_writes_it": f"{generated}/{n}",
                         "mean_margin_nats": round(statistics.mean(margins), 2)}
    novel.close()
    return {"book_tokens": book_tokens, "budget": args.budget, "facts": len(facts),
            "semantic_items": novel.memories.semantic._state.index.ntotal,
            "index_build_s": round(index_s, 1), "conditions": results, "probes": rows}


_FIRST = ["Elena", "Tomas", "Harrow", "Abel", "Mirela", "Oskar", "Ysolde", "Corvath", "Brann",
          "Ilse", "Petra", "Janek", "Marit", "Sorrel", "Wend", "Ivo"]
_PLACES = ["Pellmarsh", "Varn", "the tower", "the mill", "the harbour", "the chapel",
           "the cliffs", "the market", "the lighthouse", "the inn"]
_DID = ["hid a letter in", "lost a ring at", "was born near", "quarrelled with a sailor at",
        "buried a box under", "first saw the comet from", "sold a horse at", "sang at"]


def latency(lm, slot, args, sizes: list[int]) -> dict:
    """Per-Continue recall and context-assembly time with N memories in the index.

    The N vectors are seeded random unit vectors (embedding 100k texts with MiniLM on
    two shared CPU cores would take about half an hour and does not change search cost);
    queries are embedded with the real MiniLM, and each memory has three writer links
    so the association tiers do real work."""
    import numpy as np

    from ..novel import Novel

    out = {}
    rng = np.random.default_rng(args.seed)
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"latency-{n}-"))
        novel = Novel.create(root / "book", "Latency", model=slot)
        cid = novel.chapters.add("Now", "Elena climbed to the lighthouse lamp room. " * 30)
        texts = [f"{_FIRST[i % 16]} {_DID[(i // 16) % 8]} {_PLACES[(i // 128) % 10]} "
                 f"in year {i // 1280}." for i in range(n)]
        novel.store.memories.add_many(texts, kind="fact", source="bench")
        links = rng.integers(1, n + 1, size=(n, 3))
        novel.store.associations.add_many(
            [(f"memory:{min(i, j)}", f"memory:{max(i, j)}", 3.0)
             for i, row in enumerate(links, 1) for j in row if i != j], kind="link", keep=True)
        vecs = rng.standard_normal((n, novel.memories.semantic.embedder.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        ids = novel.store.memories.ids()
        novel.memories.semantic.add_vectors([("memory", i, 0, len(x)) for i, x in zip(ids, texts)], vecs)
        novel.memories.set_settings(min_score=-1.0)  # random vectors: keep the tiers busy
        settings = novel.settings.get("recall")
        recall_ms, build_ms, hits = [], [], []
        for q in range(args.queries):
            query = f"{_FIRST[q % 16]} walked to {_PLACES[q % 10]} at dusk, thinking of year {q}."
            t0 = time.perf_counter()
            found = novel.memories.semantic.recall(query, settings, token_budget=args.budget // 3)
            recall_ms.append((time.perf_counter() - t0) * 1000)
            hits.append(len(found))
            novel.chapters.save(cid, "Elena climbed to the lighthouse lamp room. " * 30 + query)
            t0 = time.perf_counter()
            novel.build_context(cid, args.budget)
            build_ms.append((time.perf_counter() - t0) * 1000)
        # One accepted passage: the incremental update a Continue pays afterwards.
        novel.store.add_passage(cid, novel.store.chapter(cid)["head_rev"], 0, 40,
                                      "Tomas rowed out past the harbour wall at dawn.", "model")
        t0 = time.perf_counter()
        novel.memories.semantic.sync()
        update_s = time.perf_counter() - t0
        out[str(n)] = {"recall_ms_median": round(statistics.median(recall_ms), 1),
                       "recall_ms_p95": round(sorted(recall_ms)[int(0.95 * len(recall_ms))], 1),
                       "build_context_ms_median": round(statistics.median(build_ms), 1),
                       "recalled_items_mean": round(statistics.mean(hits), 1),
                       "update_after_accept_s": round(update_s, 2)}
        novel.close()
    return out


def run(args) -> int:
    import torch

    from ..models import ModelSlot, load

    torch.manual_seed(args.seed)
    lm = load(args.model)
    slot = ModelSlot.ready(lm)
    report = {"model": lm.name, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "seed": args.seed}
    report["continuity"] = continuity(lm, slot, args)
    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    report["latency"] = latency(lm, slot, args, sizes)
    if args.json:
        print(json.dumps(report))
        return 0
    c = report["continuity"]
    print(f"model {report['model']} · book {c['book_tokens']:,} tokens · budget {c['budget']} "
          f"· {c['facts']} facts · {c['semantic_items']} semantic items "
          f"(indexed in {c['index_build_s']} s)")
    print(f"{'condition':<13}{'fact in prompt':>16}{'ranked first':>14}{'greedy':>9}"
          f"{'margin':>9}")
    for cond, r in c["conditions"].items():
        print(f"{cond:<13}{r['fact_in_prompt']:>16}{r['answer_ranked_first']:>14}"
              f"{r['greedy_writes_it']:>9}{r['mean_margin_nats']:>9}")
    for n, r in report["latency"].items():
        print(f"{int(n):>7,} memories: recall {r['recall_ms_median']} ms (p95 "
              f"{r['recall_ms_p95']}), whole context {r['build_context_ms_median']} ms, "
              f"{r['recalled_items_mean']} items; update after accept "
              f"{r['update_after_accept_s']} s")
    return 0
