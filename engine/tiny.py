"""A tiny random Llama with a byte-level tokenizer, built in code (no download).

Tests and benchmarks of the machinery use it where the real model's behaviour
does not matter; ``python -m engine`` accepts ``--model tiny`` too
(``engine.models.load_tiny`` wraps it as a LoadedModel).
"""
from __future__ import annotations


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens plus specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def tiny_model(seed: int = 0, layers: int = 4, hidden: int = 64, heads: int = 4,
               kv_heads: int = 2, max_positions: int = 2048):
    """(model, tokenizer): a seeded random LlamaForCausalLM, GQA like the real one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        # A random model ends a passage (EOS) every few hundred tokens, which makes
        # tests of streaming and Stop flaky. Give every token embedding a constant
        # dimension 0, which survives into the final hidden state as a large positive
        # value, and point the special tokens' output rows against it: their logits
        # sit far below every byte's, so it writes until told to stop.
        model.model.embed_tokens.weight.normal_(0.0, 1.0)  # tokens differ as in real models
        model.model.embed_tokens.weight[:, 0] = 3.0
        model.lm_head.weight.mul_(1.5 / (cfg.initializer_range * hidden ** 0.5))
        model.lm_head.weight[:3] = 0.0
        model.lm_head.weight[:3, 0] = -5.0
    return model, tok
