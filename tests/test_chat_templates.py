"""The chat templates fcdpo writes are .jinja files in src/fcdpo/templates, sharing one tool-call block."""

from jinja2 import Environment

from fcdpo.chat_templates import CHAT_TEMPLATES, TEMPLATE_DIR, packaged_template
from fcdpo.tinylab import CHAT_TEMPLATE

CALL = {"role": "assistant", "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 3, "b": 4}}}]}
CHAT = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, CALL,
        {"role": "tool", "name": "add", "content": "7"}, {"role": "assistant", "content": "Final answer: 7"}]


def render(template: str) -> str:
    # The `generation` tag is transformers' extension; plain Jinja needs it gone to render the rest.
    plain = template.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    return Environment().from_string(plain).render(messages=CHAT, tools=None, add_generation_prompt=False,
                                                   bos_token="<s>", eos_token="</s>")


def test_every_template_file_is_used_and_the_tool_call_block_is_spliced_into_each_that_includes_it():
    names = {p.stem for p in TEMPLATE_DIR.glob("*.jinja")}
    assert names == {"tool_call", "tiny-lab", *CHAT_TEMPLATES}
    block = (TEMPLATE_DIR / "tool_call.jinja").read_text().strip()
    for template in (CHAT_TEMPLATE, *CHAT_TEMPLATES.values()):
        assert "include" not in template
    assert block in CHAT_TEMPLATE and block in CHAT_TEMPLATES["mistral-tools"]
    assert CHAT_TEMPLATE == packaged_template("tiny-lab")


def test_the_line_breaks_of_a_template_file_render_as_nothing():
    assert render(CHAT_TEMPLATE) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n7<|im_end|>\n<|im_start|>assistant\nFinal answer: 7<|im_end|>\n")
    assert render(CHAT_TEMPLATES["mistral-tools"]) == (
        '<s> [INST] S\n\nQ [/INST] <tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call></s>'
        " [INST] Result: 7 [/INST] Final answer: 7</s>")
