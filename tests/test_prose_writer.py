"""Refusals while sampling, on crafted token streams: a scripted model prefers a refused
start (heading, prompt field, Q/A line, list, assistant phrase); the writer must
resample it before anything is shown, and leave legitimate sentences whole."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine import thoughts, writer
from engine.tiny import byte_tokenizer


class Scripted(torch.nn.Module):
    """Greedy-friendly logits: at each step the next character of the first of
    ``options`` that the text so far is a prefix of scores highest, the second's next,
    and so on; the end of a finished option is end of text. The token sequence lives
    in the cache's values, so the writer's rollbacks (cache crops) are what it sees."""

    def __init__(self, tok, prompt_len: int, options: list[str]):
        super().__init__()
        from transformers import LlamaConfig

        self.config = LlamaConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=1, num_key_value_heads=1)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.prompt_len, self.options = tok, prompt_len, options
        self.seen: list[str] = []  # every text the model was asked to continue

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        x = input_ids.float()[:, None, :, None]
        _, values = past_key_values.update(x, x, 0)
        seq = values[0, 0, :, 0].long().tolist()
        done = self.tok.decode(seq[self.prompt_len:])
        self.seen.append(done)
        logits = torch.full((len(self.tok),), -20.0)
        for rank, opt in enumerate(self.options):
            if not opt.startswith(done):
                continue
            nxt = (self.tok(opt[len(done)], add_special_tokens=False)["input_ids"][0]
                   if len(opt) > len(done) else self.tok.eos_token_id)
            logits[nxt] = max(float(logits[nxt]), 10.0 - rank)
        return SimpleNamespace(logits=logits[None, None, :])


def write(prompt: str, options: list[str], **sampling):
    tok = byte_tokenizer()
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    model = Scripted(tok, len(ids), options)
    lm = SimpleNamespace(model=model, tokenizer=tok, eos_ids={tok.eos_token_id})
    result = writer.Result()
    s = writer.Sampling(temperature=0.0, max_new_tokens=200, seed=0, repetition_penalty=1.0,
                        **sampling)
    deltas = list(writer.stream(lm, ids, s, result=result))
    assert "".join(deltas) == result.text  # what was shown is exactly the passage
    return result, deltas, model


PROSE = "The rain fell on the roof of the lighthouse all night long, and she slept."
STORY = "She had waited all winter, and she was tired too.\n\n"


@pytest.mark.parametrize("bad", [
    "Chapter 4\nThe storm.",                       # a heading line
    "Epilogue: What did you do?\nShe asked.",       # a heading with a title
    "Premise: The Keeper's Daughter by A. Writer",  # the bible echoed
    "Style: Spare, close third person.",
    "[Remember: Elena's eyes are grey.]",           # a memory block echoed
    "A: [writing down the answer]",                 # a quiz line
    "Q: Why did she stay?",
    "1. She lights the lamp.\n2. She waits.",       # a list
    "- She lights the lamp.",
    "## The Storm",                                 # markdown
    "Sure! Here's the rewritten version of your story:",  # an assistant's reply
    "3 thoughts have been given as to why I edited this piece, here are some options.",
    "Boy: \"You're telling me about the island.\"",   # a play script's speaker label
    "[Later: The island is called the Island of the Sea.]",
    "[Sounds like an old man talking to someone else.]",
    "1789-04-25 16:34:53\nDear Miss Bale!",          # a line of numbers
    "]\nShe smiled.",                                 # a stray bracket
])
def test_a_refused_line_start_is_resampled_before_it_is_shown(bad):
    result, deltas, _ = write(STORY, [bad, PROSE])
    assert result.text == PROSE
    assert not any(bad[:6] in d for d in deltas)


def test_an_assistant_sentence_mid_line_is_resampled():
    result, _, _ = write("She slept.", [" Here is the rewritten version of the scene.",
                                        " Morning came grey and cold over the island."])
    assert result.text == " Morning came grey and cold over the island."


@pytest.mark.parametrize("good", [
    "She read the chapter twice, and Chapter 4 was the one she loved.",
    "Part one of the plan was simple, she thought, and the rest was only luck.",
    "Chapter and verse, he could quote the old keeper's log to anyone who asked.",
    "\"A: that is what he wrote,\" she said, and laughed at the old joke.",
    "Of course she would go. Would you like to come, she asked him at the door.",
    "The passage was dark and narrow, and the stairs went down into the rock.",
    "He had one thought: to reach the lamp before the storm reached the glass.",
    "* * *\nMorning came.",                           # a scene break is the book's own
])
def test_a_legitimate_sentence_is_never_cut(good):
    result, _, model = write(STORY, [good])
    assert result.text == good and result.stop_reason == "eos"


def test_a_legitimate_short_line_is_kept_at_the_end():
    result, _, _ = write(STORY, ["She slept."])
    assert result.text == "She slept."


def test_refusals_off_leaves_the_stream_alone():
    result, _, _ = write(STORY, ["Chapter 4\nThe storm.", PROSE], refuse=False)
    assert result.text == "Chapter 4\nThe storm."


def test_a_start_refused_every_time_ends_the_passage_there():
    opts = [f"She stood.\n{i}. Item number {i}." for i in range(1, 9)]
    result, deltas, _ = write("The list.\n", opts)
    assert result.text.rstrip() == "She stood."
    assert result.stop_reason == "refused"


def test_no_word_glued_to_the_sentence_before():
    # the model's first choice would glue "Then" to "too."; the spaced token wins
    result, _, _ = write("She was tired too.", ["Then she left.", " Then she left."])
    assert result.text == " Then she left."
    # the same where a margin note stands between the text and the passage
    prompt = "She was tired too." + thoughts.inline("Next: she leaves.")
    result, _, _ = write(prompt, ["Then she left.", " Then she left."])
    assert result.text == " Then she left."
    # and inside the passage: "asleep.He" is never written
    result, _, _ = write("It was late.", [" She slept.He woke.", " She slept. He woke."])
    assert result.text == " She slept. He woke."
    # a word may still go on where the text stops mid-word
    result, _, _ = write("She was tir", ["ed.", " ed."])
    assert result.text == "ed."


def test_the_thought_markers_match_the_thought_book():
    assert writer.THOUGHT.search("x." + thoughts.inline("a note"))
    assert writer.lead_text(byte_tokenizer(), byte_tokenizer()(
        "too." + thoughts.inline("Next: go."), add_special_tokens=False)["input_ids"]) \
        .endswith("too.")


def test_refusal_rules():
    assert writer.refusal("Chapter 4\n", True) == "heading"
    assert writer.refusal("Chapter 4", True) is None  # not known yet: the line goes on
    assert writer.refusal("Chapter 4", True, final=True) == "heading"
    assert writer.refusal("Chapter 4 began with a storm.\n", True) is None
    assert writer.refusal("Premise: x", False) == "prompt field"
    assert writer.refusal("1. x", True) and writer.refusal("1. x", False) is None
    assert writer.refusal("I hope this helps!", False) == "assistant"


def test_an_opening_from_the_prompt_is_the_passage_start():
    tok = byte_tokenizer()
    prompt = "She slept too.\n\nTomas"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    lm = SimpleNamespace(model=Scripted(tok, len(ids), [" rowed out to the lamp."]),
                         tokenizer=tok, eos_ids={tok.eos_token_id})
    result = writer.Result()
    deltas = list(writer.stream(lm, ids, writer.Sampling(temperature=0.0, seed=0),
                                result=result, opening="\n\nTomas"))
    assert deltas[0] == "\n\nTomas" and result.text == "\n\nTomas rowed out to the lamp."
    assert "".join(deltas) == result.text
