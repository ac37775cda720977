#!/usr/bin/env python3
"""Generate the tokenizer fixtures in tokenizer/tests/fixtures/ with llama.cpp.

The fixtures hold, for a corpus of strings and every combination of add_special/parse_special,
the token ids llama.cpp's llama_tokenize produces and the bytes llama_detokenize gives back.
tokenizer/src/it/reference.rs compares llmd's tokenizer against them; the tests never run
llama.cpp themselves.

It also renders real chat templates (llama.cpp's models/templates/*.jinja, found in the
llama-cpp-python source tree or $LLAMA_CPP_TEMPLATES) with Python's jinja2 into
chat_templates.json, for tokenizer/src/it/chat.rs.

Usage (with the llama.cpp reference build's Python binding, `llama_cpp`, on the path, and
llmd built: target/release/llmd or $LLMD_BIN writes the Phi-3 vocabulary):
    scripts/gen-tokenizer-fixtures.py GEMMA_GGUF QWEN_HEADER_GGUF [OUT_DIR]

QWEN_HEADER_GGUF may be a file whose tensor data is truncated (only the header is needed):
llama.cpp refuses such a file even for its vocabulary, so the script first copies the header's
metadata into a temporary GGUF without tensors.
"""

import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

import jinja2
import jinja2.sandbox
import llama_cpp

# Byte sizes of the fixed-size GGUF value types.
GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_STRING = 8
GGUF_ARRAY = 9
# The header of a large vocabulary fits well within this.
HEADER_READ_LIMIT = 256 << 20


def vocab_only_copy(src, dst, pre=None, name=None):
    """Write dst: src's magic, version and metadata with zero tensors; with `pre`, the value of
    tokenizer.ggml.pre replaced; with `name`, the value of general.name (llama.cpp sets some
    special tokens' whitespace stripping by the model's name)."""
    replace = {}
    if pre is not None:
        replace["tokenizer.ggml.pre"] = pre
    if name is not None:
        replace["general.name"] = name
    replaced = set()
    with open(src, "rb") as f:
        data = f.read(HEADER_READ_LIMIT)
    magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    if magic != b"GGUF":
        raise SystemExit(f"{src}: not a GGUF file")
    off = 24

    def skip_str(o):
        (n,) = struct.unpack_from("<Q", data, o)
        return o + 8 + n

    def skip_val(o, t):
        if t == GGUF_STRING:
            return skip_str(o)
        if t == GGUF_ARRAY:
            at, n = struct.unpack_from("<IQ", data, o)
            o += 12
            if at in GGUF_SIZES:
                return o + GGUF_SIZES[at] * n
            for _ in range(n):
                o = skip_val(o, at)
            return o
        return o + GGUF_SIZES[t]

    out = bytearray(struct.pack("<4sIQQ", magic, version, 0, n_kv))
    for _ in range(n_kv):
        key_end = skip_str(off)
        (n,) = struct.unpack_from("<Q", data, off)
        key = data[off + 8 : key_end].decode("utf-8")
        (t,) = struct.unpack_from("<I", data, key_end)
        end = skip_val(key_end + 4, t)
        if key in replace and t == GGUF_STRING:
            value = replace[key].encode("utf-8")
            out += data[off : key_end + 4] + struct.pack("<Q", len(value)) + value
            replaced.add(key)
        else:
            out += data[off:end]
        off = end
    if replaced != set(replace):
        raise SystemExit(f"{src}: no string value for {sorted(set(replace) - replaced)}")
    out += b"\0" * ((-len(out)) % 32)
    with open(dst, "wb") as f:
        f.write(out)


CORPUS = [
    "",
    " ",
    "  ",
    "\n",
    "Hello world",
    " Hello world",
    "Hello world ",
    "  leading and trailing  ",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done it, isn't it? We'd go. HE'S HERE, I'M OK, THEY'LL GO",
    "It's 'quoted' and \"double quoted\" text.",
    "Numbers: 0 1 12 123 1234 12345 123456 1234567890",
    "3.14159 2,718 1e-10 -42 +7 0x1F 1_000_000",
    "Prices: $19.99, €5, £3.50, ¥1000",
    "Dates: 2024-02-29T13:05:09Z and 12/31/1999",
    "fn main() {\n    println!(\"Hello, world!\");\n}\n",
    "def f(x):\n\treturn x ** 2  # square\n",
    "if (a && b || !c) { return a->b[i] >= 0 ? x : y; }",
    "<html><body class=\"main\"><p>Hi &amp; bye</p></body></html>",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.org",
    "line one\nline two\n\nline four\n\n\n",
    "windows\r\nline\r\nendings\r\n",
    "tabs\tand\t\tmore\ttabs",
    "multiple     spaces      between",
    "   \n   \n\t\n ",
    "trailing newline\n",
    "\n\nleading newlines",
    "你好，世界！这是一个测试。",
    "日本語のテキストです。カタカナとひらがな。",
    "한국어 텍스트입니다.",
    "Ελληνικά κείμενα και Русский текст",
    "مرحبا بالعالم",
    "हिन्दी पाठ का उदाहरण",
    "ภาษาไทย",
    "Ünïcödé àccénts: café, naïve, façade, Ångström",
    "Emoji: 😀 😃 😄 🎉🎉 👍🏽 🇫🇷",
    "Family: 👨‍👩‍👧‍👦 and ❤️ and 🏳️‍🌈",
    "Math: ∑ ∫ √ ∞ ≠ ≤ ≥ ± × ÷ α β γ",
    "Arrows → ← ↑ ↓ and box ┌─┐ │ └─┘",
    "Zero\u200bwidth\u200bspace and non\u00a0breaking\u3000ideographic",
    "Combining: e\u0301 a\u0308 n\u0303",
    "Full-width: ＡＢＣ１２３！？",
    "Mixed 中文 and English 123 text 😀!",
    "ALL CAPS SENTENCE WITH NUMBERS 2024",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier",
    "...!!!???---___***",
    "a",
    "ab",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|>after",
    "<|im_start|>  \t\n spaced<|im_end|> \n\x0b\x0c\r end <|endoftext|>  x",
    "a \n<start_of_turn>\n\n user<end_of_turn>  \n<eos>  <bos> y",
    "<s> one </s>  two <unk>  three",
    "<|user|>\nHi there<|end|>\n<|assistant|>\n  Hello!<|end|>\n<|endoftext|>\n",
    "<｜User｜>What is 2+2?<｜Assistant｜>",
    "<unk> <pad> <mask> [multimodal]",
    "Text with <0x41> byte token text",
    "▁ already escaped ▁▁ spaces",
    "Ġ ċ Ċ GPT-2 byte characters",
    "The year 1999 was followed by 2000, then 2001.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.\n\n"
    "Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat "
    "nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt in culpa qui "
    "officia deserunt mollit anim id est laborum.",
]

# token_to_piece fixtures: the first PIECE_HEAD ids and every PIECE_STRIDE-th id.
PIECE_HEAD = 600
PIECE_STRIDE = 257

# tokenizer.ggml.pre values checked on the Qwen2 vocabulary besides its own.
OTHER_PRE_TOKENIZERS = ["llama-bpe", "deepseek-llm", "deepseek-coder", "gpt-2", "default", "tekken"]

FLAGS = [(True, False), (False, False), (True, True), (False, True)]


def pre_name(model):
    return model.metadata.get("tokenizer.ggml.pre")


def token_to_piece(vocab, token, special):
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def detokenize(model, ids, remove_special, unparse_special):
    vocab = model._model.vocab
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 16 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(
            vocab, arr, len(ids), buf, size, remove_special, unparse_special
        )
        if n >= 0:
            return buf.raw[:n]
        size = -n + 1


def generate(name, path, out_dir, flags=FLAGS, with_pieces=True):
    model = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    cases = []
    for text in CORPUS:
        for add_special, parse_special in flags:
            ids = model.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
            cases.append(
                {
                    "text": text,
                    "add_special": add_special,
                    "parse_special": parse_special,
                    "ids": ids,
                    "detokenized_hex": detokenize(model, ids, True, False).hex(),
                }
            )
    vocab = model._model.vocab
    n_vocab = model.n_vocab()
    eog = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    pieces = []
    if with_pieces:
        # token_to_piece for the first ids (control, byte and short tokens), a sample of the
        # rest and the end-of-generation tokens.
        sample = set(range(min(PIECE_HEAD, n_vocab))) | set(range(0, n_vocab, PIECE_STRIDE))
        pieces = [
            {
                "id": i,
                "plain_hex": token_to_piece(vocab, i, False).hex(),
                "special_hex": token_to_piece(vocab, i, True).hex(),
            }
            for i in sorted(sample | set(eog))
        ]
    fixture = {
        "generator": "scripts/gen-tokenizer-fixtures.py",
        "pre": pre_name(model),
        "eog": eog,
        "pieces": pieces,
        "llama_cpp_python": llama_cpp.__version__,
        "model": name,
        "vocab_size": model.n_vocab(),
        "bos": model.token_bos(),
        "eos": model.token_eos(),
        "cases": cases,
    }
    out = os.path.join(out_dir, f"{name}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{out}: {len(cases)} cases")


# Real chat templates (from llama.cpp's models/templates, itself from the models' tokenizer
# configs) rendered by Python's jinja2 the way Hugging Face's apply_chat_template does; llmd's
# minijinja rendering must give the same text.
CHAT_TEMPLATES = [
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "meta-llama-Llama-3.1-8B-Instruct",
    "google-gemma-2-2b-it",
    "microsoft-Phi-3.5-mini-instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
]

CHAT_CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "user", "content": "Hi  there\n"},
        {"role": "assistant", "content": " Hello! How can I help? "},
        {"role": "user", "content": "Tell me a joke about 🦀."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "<think>easy</think>Blue."},
        {"role": "user", "content": "Another?"},
    ],
]


def hf_environment():
    """jinja2 set up as transformers' apply_chat_template does."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def generate_chat_templates(template_dir, out_dir):
    env = hf_environment()
    templates = []
    for name in CHAT_TEMPLATES:
        with open(os.path.join(template_dir, f"{name}.jinja"), encoding="utf-8") as f:
            source = f.read()
        template = env.from_string(source)
        cases = []
        for messages in CHAT_CONVERSATIONS:
            for add_generation_prompt in (True, False):
                case = {"messages": messages, "add_generation_prompt": add_generation_prompt}
                try:
                    case["rendered"] = template.render(
                        messages=messages,
                        add_generation_prompt=add_generation_prompt,
                        bos_token="<BOS>",
                        eos_token="<EOS>",
                    )
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                cases.append(case)
        templates.append({"name": name, "source": source, "cases": cases})
    out = os.path.join(out_dir, "chat_templates.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"generator": "scripts/gen-tokenizer-fixtures.py", "jinja2": jinja2.__version__,
                   "templates": templates}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{out}: {len(templates)} templates")


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    gemma, qwen = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = (
        sys.argv[3]
        if len(sys.argv) == 4
        else os.path.join(here, "..", "tokenizer", "tests", "fixtures")
    )
    os.makedirs(out_dir, exist_ok=True)
    template_dir = os.path.join(
        os.path.dirname(os.path.dirname(llama_cpp.__file__)), "..", "..", "..", "..",
        "src", f"llama_cpp_python-{llama_cpp.__version__}", "vendor", "llama.cpp", "models",
        "templates",
    )
    template_dir = os.environ.get("LLAMA_CPP_TEMPLATES", template_dir)
    generate_chat_templates(template_dir, out_dir)
    generate("gemma3", gemma, out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        header = os.path.join(tmp, "qwen2-vocab.gguf")
        vocab_only_copy(qwen, header)
        generate("qwen2", header, out_dir)
        # The other pre-tokenizers, run over the same byte-level BPE vocabulary and merges.
        for pre in OTHER_PRE_TOKENIZERS:
            path = os.path.join(tmp, f"{pre}.gguf")
            vocab_only_copy(qwen, path, pre=pre)
            generate(f"qwen2-vocab-pre-{pre}", path, out_dir, flags=[(False, False)], with_pieces=False)
        # llama.cpp's by-name rules: a model named like Phi-3 ("llmd synthetic phi3 tiny") has
        # special tokens that swallow the whitespace after them. make-model's Phi-3 SentencePiece
        # vocabulary (llama.cpp refuses a Phi-3-named vocabulary without "</s>", such as Gemma's
        # or Qwen2's).
        phi3 = os.path.join(tmp, "phi3-spm.gguf")
        llmd = os.environ.get("LLMD_BIN", os.path.join(here, "..", "target", "release", "llmd"))
        subprocess.run(
            [llmd, "make-model", "--arch", "phi3", "--vocab-kind", "spm", "--header-only",
             "--output", phi3],
            check=True, stderr=subprocess.DEVNULL,
        )
        path = os.path.join(tmp, "phi3-spm-vocab.gguf")
        vocab_only_copy(phi3, path)
        generate("phi3-spm", path, out_dir, with_pieces=False)

if __name__ == "__main__":
    main()
