#!/usr/bin/env python3
"""Makes the byte-level BPE tokenizer and chat template fixtures of tests/bpe_tokenizer.rs and
tests/chat_template.rs, in OUT_DIR (run at test time; nothing is committed):

* four byte-level BPE tokenizers trained here with the `tokenizers` package (a ~1,200-token vocabulary on a
  small generated corpus), each with its family's pre-tokenizer exactly as the family's Hugging Face
  tokenizer.json defines it, and its added tokens:
    llama-bpe: Split(Llama 3 regex: 1-3 digits) + ByteLevel, ignore_merges (Llama 3.x)
    qwen2:     NFC + Split(Qwen2 regex: single digits) + ByteLevel (Qwen2 / 2.5 / 3)
    smollm:    Digits(individual) + ByteLevel(GPT-2 regex) (SmolLM2)
    gpt-2:     ByteLevel(GPT-2 regex)
  saved as OUT/<name>/tokenizer.json and written to OUT/<name>.gguf with gguf-py, the way llama.cpp's
  convert_hf_to_gguf.py writes a "gpt2" tokenizer (tokens by id, "left right" merges, token types 1 normal /
  3 control / 4 user-defined, the special ids, add_bos_token, tokenizer.chat_template);
* OUT/expected.json: for each tokenizer, the ids transformers gives (PreTrainedTokenizerFast on the
  tokenizer.json, add_special_tokens=False; checked equal to the `tokenizers` package's) on a few hundred
  strings, and the decoded text; for each chat template (Llama 3.2, Qwen2.5, SmolLM2 in the GGUF files;
  Qwen3 in a tokenizer_config.json; a template using Python methods, tojson, namespaces and loop controls),
  transformers' apply_chat_template(..., tokenize=False) on multi-turn conversations; and a conversational
  preference record tokenized as TRL does.

The chat templates below are transcriptions of the templates these models publish (tokenizer_config.json /
chat_template.jinja), tool-call branches included.

Usage: .venv/bin/python scripts/make_bpe_fixture.py OUT_DIR   (TZ=UTC for the strftime_now case)
"""
import json
import os
import random
import sys

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA32_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

# Python methods (pycompat), tojson with its options, namespaces, loop controls, slicing, filters.
PYCOMPAT_TEMPLATE = """{{ bos_token }}{% set ns = namespace(n=0, roles=[]) %}
{%- for m in messages %}
{%- if m.role == 'skip' %}{% continue %}{% endif %}
{%- if m.content.startswith('STOP') %}{% break %}{% endif %}
{%- set ns.n = ns.n + 1 %}
[{{ loop.index }}/{{ loop.length }}] {{ m.role | upper }}: {{ m.content.strip() }} | {{ m.content.split(' ')[-1] }} | {{ m.content.replace('a', 'A').lstrip() }} | {{ m.content.rstrip('!. ') }} | {{ m.content | length }} | {{ m.content.endswith('?') }}
{% endfor %}
n={{ ns.n }} bools={{ true }},{{ ns.n > 100 }} none={{ none }} list={{ [1, 'a', none, true, 2.5, "it's", 'tab\t'] }} dict={{ {'k': 'v', 'n': [1.0]} }} float={{ 0.5 }},{{ 1.0 }}
last={{ messages[-1].role }} rev={{ (messages[::-1] | map(attribute='role') | list) | join(',') }} title={{ 'hello world' | title }}
{{ messages | tojson }}
{{ extra | tojson }}
{{ extra | tojson(indent=2) }}
{{ extra | tojson(sort_keys=true) }}
{{ extra | tojson(separators=(',', ':')) }}
{% for k, v in extra.items() %}{{ k }}={{ v | tojson }};{% endfor %}
{% if add_generation_prompt %}<gen>{{ eos_token }}{% endif %}
"""

RAISING_TEMPLATE = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('tools are not supported: ' + m.content) }}{% endif %}{{ m.content }}{% endfor %}"

CONVERSATIONS = [
    [
        ("system", "  You are a terse assistant.\n"),
        ("user", "What is 2 + 2?"),
        ("assistant", "4."),
        ("user", "And 12345 * 6789?"),
        ("assistant", "83810205 — I checked it twice."),
    ],
    [("user", "Écris un haïku sur la mer."), ("assistant", "Vagues d'écume\nle sel sur mes lèvres\n  l'horizon s'efface")],
    [
        ("user", "def f(x):\n    return x ** 2  # square\n"),
        ("assistant", "<think>\nThe user pasted code.\n</think>\n\nIt squares `x`: f(3) == 9."),
        ("user", "日本語で説明して 🙂"),
        ("assistant", "二乗を返す関数です。 ✅"),
        ("user", "Thanks!"),
        ("assistant", "<think>short</think>You're welcome — don't mention it!"),
    ],
    [("system", "Answer in one word."), ("user", "Capital of France?")],
    [("user", "hi")],
]

TEMPLATE_CASES = [
    # (name, template, where it is stored, extra kwargs per render)
    ("llama-3.2", LLAMA32_TEMPLATE, "llama-bpe", [{"date_string": "26 Jul 2024"}, {}]),
    ("qwen2.5", QWEN25_TEMPLATE, "qwen2", [{}]),
    ("smollm2", SMOLLM2_TEMPLATE, "smollm", [{}]),
    ("qwen3", QWEN3_TEMPLATE, "qwen3-config", [{}, {"enable_thinking": False}]),
]

PYCOMPAT_CONVERSATION = [
    ("system", "  Be nice!  "),
    ("user", "Is this a question?"),
    ("skip", "never shown"),
    ("assistant", "yes, a banana."),
    ("user", 'quote " backslash \\ tab \t newline \n unicode é 日本 🙂 control \x01'),
    ("user", "STOP here"),
    ("assistant", "not reached"),
]
# Keys in sorted order: the Rust side reads them through serde_json's (sorted) maps.
PYCOMPAT_EXTRA = {
    "alpha": {"empty": [], "empty_map": {}, "nested": {"a": [1.0, 1e20, -0.0001], "b": 1}},
    "text": "naïve \"quotes\" <tags> & ampersands",
    "zeta": [1, 2.5, True, None, "x"],
}

CORPUS_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see that it's what we'd hoped; they've done it, haven't they?",
    "Numbers: 0 1 12 123 1234 12345 3.14159 2,718 1e-9 and 1,000,000.",
    "def main():\n    print(\"hello, world\")\n    return 0\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "Café, naïve, façade, résumé, Zürich, São Paulo, Ångström.",
    "日本語のテキストと中文文本，还有한국어 문장도 있습니다。",
    "Emoji: 🙂 🚀 👍🏽 ❤️ 🇫🇷 and symbols ∑ ∫ √ ≈ ≠ ∞.",
    "  Leading spaces, trailing spaces   \n\n\tTabs\tand\r\nCRLF lines.\n",
    "<html><body class=\"main\">Hello &amp; goodbye</body></html>",
    "SHOUTING WORDS AND MiXeD CaSe, O'Neill's DON'T WON'T.",
    "user\nassistant\nsystem\nWhat is the capital of France? Paris is.",
    "Preference optimization: DPO, RPO, SFT, and the reference model π_ref.",
]


def corpus():
    rng = random.Random(7)
    lines = []
    for _ in range(400):
        sentence = rng.choice(CORPUS_SENTENCES)
        words = sentence.split(" ")
        rng.shuffle(words)
        lines.append(sentence)
        lines.append(" ".join(words))
        # Digit runs of every length, so that digit merges exist (Llama 3 keeps up to 3 digits together).
        lines.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 7))) for _ in range(6)))
    return lines


ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + list(
    "     \n\n\t\r.,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`"
) + ["é", "e\u0301", "ñ", "ü", "ß", "日", "本", "語", "中", "文", "한", "🙂", "🚀", "👍🏽", "∑", "\u00a0", "\u3000"]


def test_strings(specials):
    base = [
        "", " ", "  ", "   ", "    ", "\n", "\n\n", "\n\n\n", " \n", "\n ", "\t", "\r\n", " \t \n ",
        "hello", " hello", "  hello", "hello ", "hello  world", "hello   world  ", "Hello, World!",
        "1", "12", "123", "1234", "12345", "123456", "1234567", "3.14159", "x=10000000", "1,000,000 dollars",
        "a1b22c333d4444", "2024-07-26T12:00:00Z",
        "I'm", "you're", "he's", "we've", "they'd", "it'll", "I'M LOUD", "DON'T", "O'Neill's",
        "日本語", "中文文本", "한국어", "日本語 テキスト", "混合 mixed 文本 text",
        "🙂", "🙂🙂", "👍🏽", "🇫🇷", "emoji 🚀 launch", "❤️",
        "café", "cafe\u0301", "naïve", "Ångström", "Zürich", "façade",
        "def f(x):\n    return x ** 2\n", "if (a && b) { c++; }", "    indented code", "<div class=\"a\">x</div>",
        "// comment\n/* block */", "print('hi')\n\n\n", "a\u00a0b", "x\u3000y", "\u200b", "tab\tseparated\tvalues",
        "!!!", "...", "?!", "---", "$$$", "@user #tag", "a.b.c", "e-mail@example.com",
    ]
    for s in specials:
        base += [s, f"{s}hello", f"hello{s}", f" {s} ", f"{s}{s}", f"user\n{s}assistant\n"]
    words = ["hello", " world", "123", "日本", "🙂", "I'm", "\n", "  ", "café", "x=1"]
    combos = [a + b for a in words for b in words]
    rng = random.Random(1234)
    randoms = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    return base + combos + randoms


FAMILIES = [
    # name, pre-tokenizer parts, ignore_merges, specials (control), user-defined, ids by role, add_bos, arch
    dict(
        name="llama-bpe",
        normalizer=None,
        pre=pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        ),
        ignore_merges=True,
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        user_defined=[],
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        eot="<|eot_id|>",
        pad=None,
        add_bos=True,
        arch="llama",
    ),
    dict(
        name="qwen2",
        normalizer=normalizers.NFC(),
        pre=pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        ),
        ignore_merges=False,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        user_defined=["<think>", "</think>"],
        bos="<|endoftext|>",
        eos="<|im_end|>",
        eot=None,
        pad="<|endoftext|>",
        add_bos=False,
        arch="qwen2",
    ),
    dict(
        name="smollm",
        normalizer=None,
        pre=pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        ),
        ignore_merges=False,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        user_defined=[],
        bos="<|im_start|>",
        eos="<|im_end|>",
        eot=None,
        pad="<|im_end|>",
        add_bos=False,
        arch="llama",
    ),
    dict(
        name="gpt-2",
        normalizer=None,
        pre=pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ignore_merges=False,
        specials=["<|endoftext|>"],
        user_defined=[],
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        eot=None,
        pad=None,
        add_bos=None,  # absent from the file: the reader's default
        arch="gpt2",
    ),
]


def train(family, out_dir):
    tok = Tokenizer(models.BPE(ignore_merges=family["ignore_merges"]))
    if family["normalizer"] is not None:
        tok.normalizer = family["normalizer"]
    tok.pre_tokenizer = family["pre"]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, min_frequency=2, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in family["specials"]])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in family["user_defined"]])
    spec = json.loads(tok.to_str())
    assert spec["model"].get("ignore_merges", False) == family["ignore_merges"], "ignore_merges was not kept"
    folder = os.path.join(out_dir, family["name"])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    return tok, spec, path


def write_gguf(family, tok, spec, path, template):
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    assert None not in tokens, "ids are not contiguous"
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for i, added in tok.get_added_tokens_decoder().items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer = gguf.GGUFWriter(path, arch=family["arch"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(family["name"])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[family["bos"]])
    writer.add_eos_token_id(vocab[family["eos"]])
    if family["eot"]:
        writer.add_eot_token_id(vocab[family["eot"]])
    if family["pad"]:
        writer.add_pad_token_id(vocab[family["pad"]])
    if family["add_bos"] is not None:
        writer.add_add_bos_token(family["add_bos"])
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return vocab


def hf_tokenizer(path, family, template):
    return PreTrainedTokenizerFast(
        tokenizer_file=path, bos_token=family["bos"], eos_token=family["eos"], chat_template=template
    )


def render(hf, template, conversation, add_generation_prompt, kwargs):
    messages = [{"role": r, "content": c} for r, c in conversation]
    return hf.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    expected = {"families": {}, "templates": [], "pycompat": None, "record": None}
    templates_by_store = {store: template for _, template, store, _ in TEMPLATE_CASES}
    hf_by_name = {}
    for family in FAMILIES:
        tok, spec, path = train(family, out_dir)
        gguf_path = os.path.join(out_dir, family["name"] + ".gguf")
        vocab = write_gguf(family, tok, spec, gguf_path, templates_by_store.get(family["name"]))
        hf = hf_tokenizer(path, family, templates_by_store.get(family["name"]))
        hf_by_name[family["name"]] = hf
        cases = []
        for text in test_strings(family["specials"] + family["user_defined"]):
            ids = hf(text, add_special_tokens=False)["input_ids"]
            assert ids == tok.encode(text, add_special_tokens=False).ids, f"transformers and tokenizers differ on {text!r}"
            cases.append(
                {
                    "text": text,
                    "ids": ids,
                    "decoded": hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                    "decoded_skip_special": hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
                }
            )
        expected["families"][family["name"]] = {
            "vocab_size": len(vocab),
            "bos_id": vocab[family["bos"]],
            "eos_id": vocab[family["eos"]],
            "eot_id": vocab[family["eot"]] if family["eot"] else None,
            "pad_id": vocab[family["pad"]] if family["pad"] else None,
            "add_bos": family["add_bos"],
            "cases": cases,
        }

    # Qwen3's template lives in a tokenizer_config.json (with the qwen2 vocabulary); a second folder keeps it in
    # chat_template.jinja, the way transformers 5 saves it.
    for folder, inline in [("qwen3-config", True), ("qwen3-jinja", False)]:
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
        config = {"bos_token": None, "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>"}
        if inline:
            config["chat_template"] = QWEN3_TEMPLATE
        else:
            with open(os.path.join(out_dir, folder, "chat_template.jinja"), "w", encoding="utf-8") as f:
                f.write(QWEN3_TEMPLATE)
        with open(os.path.join(out_dir, folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f)
    qwen3 = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(out_dir, "qwen2", "tokenizer.json"), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )

    for name, template, store, kwargs_list in TEMPLATE_CASES:
        hf = qwen3 if store == "qwen3-config" else hf_by_name[store]
        renders = []
        for conversation in CONVERSATIONS:
            for add_generation_prompt in (False, True):
                for kwargs in kwargs_list:
                    renders.append(
                        {
                            "messages": conversation,
                            "add_generation_prompt": add_generation_prompt,
                            "kwargs": kwargs,
                            "text": render(hf, template, conversation, add_generation_prompt, kwargs),
                        }
                    )
        expected["templates"].append({"name": name, "store": store, "renders": renders})

    hf = hf_by_name["llama-bpe"]
    expected["pycompat"] = {
        "template": PYCOMPAT_TEMPLATE,
        "raising_template": RAISING_TEMPLATE,
        "renders": [
            {
                "messages": PYCOMPAT_CONVERSATION,
                "add_generation_prompt": g,
                "kwargs": {"extra": PYCOMPAT_EXTRA},
                "text": render(hf, PYCOMPAT_TEMPLATE, PYCOMPAT_CONVERSATION, g, {"extra": PYCOMPAT_EXTRA}),
            }
            for g in (False, True)
        ],
    }

    # A conversational preference record, tokenized as TRL's DPO does: prompt = template with the generation
    # prompt; each response = what the full conversation adds after it, then EOS; no BOS added (the Llama 3
    # template writes it).
    prompt = [("system", "Be brief."), ("user", "Name a prime number above 10.")]
    chosen, rejected = [("assistant", "11.")], [("assistant", "Twelve, I think — 12.")]
    records = {}
    for name, store in [("llama-bpe", "llama-bpe"), ("qwen2", "qwen2"), ("smollm", "smollm")]:
        hf = hf_by_name[name]
        template = templates_by_store[store]
        kwargs = {}  # data::Tokenizer renders without extra variables (Llama 3.2 reads strftime_now)
        prompt_text = render(hf, template, prompt, True, kwargs)
        out = {"prompt_text": prompt_text, "prompt_ids": hf(prompt_text, add_special_tokens=False)["input_ids"]}
        for key, response in [("chosen", chosen), ("rejected", rejected)]:
            full = render(hf, template, prompt + response, False, kwargs)
            assert full.startswith(prompt_text)
            out[key + "_ids"] = hf(full[len(prompt_text) :], add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
        records[name] = out
    expected["record"] = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "by_family": records}

    with open(os.path.join(out_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
