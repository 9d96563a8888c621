"""A tiny pretrained-style base model built locally (no download): a randomly initialised two-layer Llama
with a character-level tokenizer (plus a few merged tokens) and a ChatML-style chat template."""

import string

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# merged tokens: some fit the answer format, "1]" and ", ]" must never be drawn where they break it
MERGES = [(", ", ",", " "), ("1.", "1", "."), ('{"', "{", '"'), ("]}", "]", "}"), ("00", "0", "0"),
          (", -", ", ", "-"), ("1]", "1", "]"), (", ]", ", ", "]")]


def char_tokenizer(chat_template=CHAT_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(c for c in string.printable if c not in "\t\r\x0b\x0c")}
    for merged, _, _ in MERGES:
        vocab[merged] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in MERGES]))
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<s>",
                                   additional_special_tokens=["<|im_start|>"], chat_template=chat_template)


def save_base(path, chat_template=CHAT_TEMPLATE):
    """Save the tiny Llama and its tokenizer as a Hugging Face model directory; return its path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer(chat_template)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
