#!/usr/bin/env python3
"""Golden chat-template renderings for crates/align/src/chat.rs, rendered by transformers' own
Jinja setup (the one `apply_chat_template` uses). Run with the project's pyenv:

  ~/.cache/orlik/pyenv/bin/python scripts/gen_chat_reference.py > tests/fixtures/chat_templates.json

Templates: ChatML with a default system turn (SmolLM2's shape), a Llama-3-like one (bos_token,
.strip(), loop.index0, raise_exception on a bad role order), a Gemma-like one (assistant -> model,
system text folded into the first user turn). Written for this test, not copied from a model.
"""
import json
from transformers.utils.chat_template_utils import _compile_jinja_template

TEMPLATES = {
    "chatml_default_system": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nJesteś pomocnym asystentem.<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3_like": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
        "{% if loop.index0 == 0 and message['role'] == 'assistant' %}{{ raise_exception('assistant cannot come first') }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'].strip() + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "gemma_like": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
        "{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
        "{% for message in rest %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "<start_of_turn>{{ role }}\n{{ (first if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Ile to jest 7 + 5?"}, {"role": "assistant", "content": "7 + 5 = 12. Odpowiedź: 12"}],
    [
        {"role": "system", "content": "Odpowiadaj krótko."},
        {"role": "user", "content": "  Stolica Polski?  "},
        {"role": "assistant", "content": "Warszawa."},
        {"role": "user", "content": "A Czech?"},
        {"role": "assistant", "content": " Praga. "},
    ],
]

out = []
for name, src in TEMPLATES.items():
    t = _compile_jinja_template(src)
    for conv in CONVERSATIONS:
        for n in range(1, len(conv) + 1):
            for gen in (False, True):
                text = t.render(messages=conv[:n], add_generation_prompt=gen, bos_token="<s>", eos_token="</s>")
                out.append({"template": name, "messages": conv[:n], "add_generation_prompt": gen, "text": text})
print(json.dumps({"format_version": 1, "generated_by": "$ORLIK_CACHE/pyenv/bin/python scripts/gen_chat_reference.py > tests/fixtures/chat_templates.json", "templates": TEMPLATES, "cases": out}, ensure_ascii=False, indent=1))
