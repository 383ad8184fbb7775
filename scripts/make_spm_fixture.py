#!/usr/bin/env python3
"""Makes the SentencePiece (Llama 2 / Mistral / TinyLlama style) tokenizer fixture of tests/spm_tokenizer.rs,
in OUT_DIR (run at test time; nothing is committed):

* OUT/spm.model: a SentencePiece BPE model trained here with the `sentencepiece` package (~1,000 pieces on the
  generated corpus of scripts/make_bpe_fixture.py; byte_fallback, split_digits and whitespace-only pieces as
  Llama 2's tokenizer has them; the identity normalization and no removal of extra whitespace, so that the
  text reaches the model unchanged, as in llama.cpp; `<unk>` 0, `<s>` 1, `</s>` 2, and the control
  symbols `[INST]`, `[/INST]` of Mistral's templates);
* OUT/spm.gguf: its vocabulary written with gguf-py the way llama.cpp's convert_hf_to_gguf.py writes a Llama
  SentencePiece tokenizer (`tokenizer.ggml.model` "llama", `pre` "default", the pieces, their scores, the
  token types 1 normal / 2 unknown / 3 control / 6 byte, the bos / eos / unknown ids, add_bos_token true,
  add_eos_token false, no add_space_prefix (llama.cpp's default: true), a Mistral chat template), plus the
  `llama.*` hyper-parameters llama.cpp reads before the vocabulary, so that it loads vocabulary-only;
* OUT/expected.json: the test strings (those of scripts/make_bpe_fixture.py with these special tokens), and
  for those without a special token sentencepiece's own ids (`encode`, no BOS / EOS) and `decode` of them;
  transformers' apply_chat_template renders of the GGUF's chat template on multi-turn conversations.

Usage: .venv/bin/python scripts/make_spm_fixture.py OUT_DIR
"""
import json
import os
import sys

import gguf
import sentencepiece as spm

from make_bpe_fixture import corpus, test_strings

SPECIALS = ["<s>", "</s>", "<unk>", "[INST]", "[/INST]"]

# Mistral 7B Instruct v0.1's template (tokenizer_config.json).
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

CONVERSATIONS = [
    [("user", "Hello!"), ("assistant", "Hi, how can I help?"), ("user", "What is 2 + 2?")],
    [("user", "日本語で話せますか？"), ("assistant", "はい 🙂"), ("user", "def f(x):\n    return x ** 2\n"),
     ("assistant", "  a square  ")],
]


def train(out_dir):
    text_path = os.path.join(out_dir, "corpus.txt")
    with open(text_path, "w", encoding="utf-8") as f:
        for line in corpus():
            # One sentence per line (newlines are left to byte fallback, as in Llama 2).
            f.write(line.replace("\r", " ").replace("\n", " ") + "\n")
    prefix = os.path.join(out_dir, "spm")
    spm.SentencePieceTrainer.train(
        input=text_path,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=1000,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=0.9995,
        control_symbols=["[INST]", "[/INST]"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def token_type(sp, i):
    # convert_hf_to_gguf.py's _create_vocab_sentencepiece.
    if sp.IsUnknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.IsControl(i):
        return gguf.TokenType.CONTROL
    if sp.IsUnused(i):
        return gguf.TokenType.UNUSED
    if sp.IsByte(i):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def write_gguf(sp, path):
    n = sp.GetPieceSize()
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("spm-fixture")
    for key, value in [
        ("context_length", 256), ("embedding_length", 64), ("block_count", 1), ("feed_forward_length", 128),
        ("attention.head_count", 4),
    ]:
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([sp.IdToPiece(i).encode("utf-8") for i in range(n)])
    writer.add_token_scores([sp.GetScore(i) for i in range(n)])
    writer.add_token_types([token_type(sp, i) for i in range(n)])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def renders(out_dir):
    """transformers' apply_chat_template of the template, with the GGUF's special tokens."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out_dir, gguf_file="spm.gguf")
    assert hf.chat_template == TEMPLATE, "transformers read another chat template from the GGUF"
    out = []
    for conversation in CONVERSATIONS:
        messages = [{"role": r, "content": c} for r, c in conversation]
        out.append({
            "messages": [[r, c] for r, c in conversation],
            "text": hf.apply_chat_template(messages, tokenize=False),
        })
    return out


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    sp = train(out_dir)
    write_gguf(sp, os.path.join(out_dir, "spm.gguf"))
    cases = []
    for text in test_strings(SPECIALS):
        case = {"text": text}
        if not any(s in text for s in SPECIALS):
            ids = sp.encode(text)
            case["sentencepiece"] = ids
            case["decoded"] = sp.decode(ids)
        cases.append(case)
    expected = {"vocab_size": sp.GetPieceSize(), "cases": cases, "chat": renders(out_dir)}
    with open(os.path.join(out_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
