"""Prompt rendering: the LLaDA/MMaDA chat template and the ``<think>`` convention (docs/model.md).

The chat format has one definition, the tokenizer's Jinja ``CHAT_TEMPLATE``
(:mod:`mmada.tokenization.text`); :func:`render` renders through it, so a curated sample is the text
``tokenizer.apply_chat_template`` gives for the same conversation:

    <|startoftext|><|start_header_id|>user<|end_header_id|>\n{content}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\n{response}<|eot_id|>

Reasoning samples prepend the thinking prefix ("You should first think about the reasoning process
…") to the last user turn and answer ``<think>{trace}</think> {final answer}``. ``prompt`` is the
text up to and including the last assistant header — the part the diffusion loss does not mask —
and ``response`` the rest.
"""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment

from mmada.data.schema import Message
from mmada.data.specs import TemplateSpec
from mmada.tokenization.text import CHAT_TEMPLATE

# The environment transformers compiles chat templates in (apply_chat_template), so whitespace
# handling is the tokenizer's; the template only reads variables, so no extension is needed.
_CHAT = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)


def render(messages: list[Message], tmpl: TemplateSpec) -> tuple[str, str]:
    """(prompt, response) of a conversation whose last message is the assistant's answer."""
    if not messages or messages[-1].role != "assistant":
        raise ValueError("a conversation must end with the assistant message")
    turns = [{"role": m.role, "content": m.content} for m in messages]
    prompt = _CHAT.render(messages=turns[:-1], bos_token=tmpl.bos, add_generation_prompt=True)
    full = _CHAT.render(messages=turns, bos_token=tmpl.bos, add_generation_prompt=False)
    return prompt, full[len(prompt) :]  # the last turn extends the generation prompt by the response


def final_text(answer: str, tmpl: TemplateSpec) -> str:
    return f"\\boxed{{{answer}}}" if tmpl.answer_format == "boxed" else answer


def assistant_content(thinking: str | None, final: str, tmpl: TemplateSpec) -> str:
    """``<think>trace</think> final`` (or the trace and the answer as plain text when think is off)."""
    if thinking is None:
        return final
    if tmpl.think:
        return f"<think>{thinking.strip()}</think> {final.strip()}"
    return f"{thinking.strip()}\n{final.strip()}"


def build_messages(history: list[Message] | None, question: str, thinking: str | None, final: str,
                   tmpl: TemplateSpec) -> list[Message]:
    """The conversation to render: optional system, earlier turns, the (prefixed) question, the answer."""
    msgs: list[Message] = []
    if tmpl.system:
        msgs.append(Message(role="system", content=tmpl.system))
    if history:
        msgs.extend(m for m in history if not (tmpl.system and m.role == "system"))
    user = (tmpl.think_prefix + question) if (thinking is not None and tmpl.think) else question
    msgs.append(Message(role="user", content=user))
    msgs.append(Message(role="assistant", content=assistant_content(thinking, final, tmpl)))
    return msgs
