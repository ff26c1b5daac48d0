"""Prompt rendering: the LLaDA/MMaDA chat template and the ``<think>`` convention (docs/model.md).

    <|startoftext|><|start_header_id|>user<|end_header_id|>\\n{content}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n{response}<|eot_id|>

Reasoning samples prepend the thinking prefix ("You should first think about the reasoning process
…") to the last user turn and answer ``<think>{trace}</think> {final answer}``. ``prompt`` is the
text up to and including the last assistant header — the part the diffusion loss does not mask —
and ``response`` the rest.
"""

from __future__ import annotations

from mmada.data.schema import Message
from mmada.data.specs import TemplateSpec

HEADER = "<|start_header_id|>{role}<|end_header_id|>\n"
EOT = "<|eot_id|>"


def turn(role: str, content: str) -> str:
    return HEADER.format(role=role) + content.strip() + EOT


def render(messages: list[Message], tmpl: TemplateSpec) -> tuple[str, str]:
    """(prompt, response) of a conversation whose last message is the assistant's answer."""
    if not messages or messages[-1].role != "assistant":
        raise ValueError("a conversation must end with the assistant message")
    prompt = tmpl.bos + "".join(turn(m.role, m.content) for m in messages[:-1]) + HEADER.format(role="assistant")
    return prompt, messages[-1].content.strip() + EOT


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
