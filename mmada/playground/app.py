"""The playground page (Gradio): a version picker and four tabs over :class:`~mmada.playground.engine.Playground`.

- **Text**: chat, with the ``<think>`` toggle; the answer's tokens as the sampler commits them (this
  step's in colour, masks as ░), then tokens/s.
- **Understanding**: an uploaded image, or one picked from a curated shard, and a question about it.
- **Text-to-image**: caption → image, the MaskGIT steps as a strip of intermediate decodes, and the
  shapes checker's verdict when the caption is one of the built-in world's.
- **Compare**: the same prompt, settings and seed on two versions.

Sampler settings are controls made from the fields of :class:`SamplerSettings` /
:class:`ImageSamplerSettings` (as the CLI's flags are) and validated by the same ``make``; a bad value
or a version that cannot be loaded shows the CLI's one-line message in the tab's status line.
"""

from __future__ import annotations

import logging
import typing
from typing import Any, Literal

import gradio as gr

from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError
from mmada.playground.engine import Playground, example_sources, settings_from_controls
from mmada.playground.versions import describe

log = logging.getLogger("mmada.playground")
HOST = "127.0.0.1"
COLORS = {"new": "#f59e0b", "mask": "#d1d5db"}
# Small defaults so a first click answers in seconds on a CPU (every field stays editable).
TEXT_DEFAULTS = {"steps": 32, "gen_length": 32, "block_length": 16}


def error_line(exc: BaseException) -> str:
    """The CLI's ``error: …`` line for a user error; an unexpected failure is logged here, never shown as a trace."""
    if isinstance(exc, MMaDAError):
        return "error: " + " ".join(str(exc).split())
    log.error("playground: unexpected failure", exc_info=exc)
    return f"error: unexpected failure ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); see the playground's log"


def _controls(cls: type, prefix: str, defaults: dict[str, Any]) -> dict[str, gr.components.Component]:
    """One control per settings field: choices for ``Literal``, a checkbox for ``bool``, a number box, or a
    text box for an optional number (empty = None). Labels and help are the field names and docstrings."""
    out = {}
    for name, f in cls.model_fields.items():
        ann, value = f.annotation, defaults.get(name, f.default)
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        optional = len(args) == 1 and type(None) in typing.get_args(ann)
        kw = {"label": name, "info": (f.description or "").strip().split("\n")[0], "elem_id": f"{prefix}-{name}"}
        if typing.get_origin(ann) is Literal:
            out[name] = gr.Dropdown(choices=list(typing.get_args(ann)), value=value, **kw)
        elif ann is bool:
            out[name] = gr.Checkbox(value=value, **kw)
        elif optional or ann is str:
            out[name] = gr.Textbox(value="" if value is None else str(value), **kw)
        else:
            out[name] = gr.Number(value=value, precision=0 if ann is int else None, **kw)
    return out


def build_app(pg: Playground, *, initial: str | None = None, links: dict[str, str] | None = None) -> gr.Blocks:
    """The page; ``initial`` is the version selected at start (a ``?model=`` query parameter wins)."""
    versions = pg.versions()
    choices = [(v.label, v.uri) for v in versions]
    first = initial or (choices[0][1] if choices else None)
    header = "# MMaDA playground\nTry any registered version: text with the `<think>` mode, image understanding, " \
             "text-to-image."
    if links:
        header += "  " + " · ".join(f"[{k}]({v})" for k, v in links.items())

    with gr.Blocks(title="MMaDA playground") as demo:
        gr.Markdown(header)
        with gr.Row():
            with gr.Column(scale=1):
                version = gr.Dropdown(choices=choices, value=first, label="version", allow_custom_value=True,
                                      info="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint directory",
                                      elem_id="version")
                refresh = gr.Button("refresh the list", size="sm", elem_id="refresh")
            info = gr.Markdown(elem_id="version-info")

        # -------------------------------------------------------------- text
        with gr.Tab("Text", elem_id="tab-text"):
            history = gr.State([])
            with gr.Row():
                with gr.Column(scale=3):
                    chat = gr.Chatbot(label="chat", elem_id="chat", height=260)
                    prompt = gr.Textbox(label="message", placeholder="What is 12+7?", elem_id="prompt")
                    with gr.Row():
                        think = gr.Checkbox(label="<think> mode (reason first, then answer)", elem_id="think")
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        clear = gr.Button("Clear", elem_id="clear")
                    denoise = gr.HighlightedText(label="denoising (this step's tokens in colour; grey: still masked)",
                                                 color_map=COLORS, show_legend=True, elem_id="denoise")
                    text_stats = gr.Markdown(elem_id="text-stats")
                    text_status = gr.Markdown(elem_id="text-status")
                with gr.Column(scale=2), gr.Accordion("sampler settings (SamplerSettings)", open=True):
                    text_ctl = _controls(SamplerSettings, "text", TEXT_DEFAULTS)

        # -------------------------------------------------------------- understanding
        with gr.Tab("Understanding", elem_id="tab-mmu"):
            with gr.Row():
                with gr.Column():
                    mmu_image = gr.Image(type="pil", label="image", elem_id="mmu-image", height=220)
                    source = gr.Dropdown(choices=example_sources(), value=None, label="or pick one from a shard",
                                         elem_id="mmu-source")
                    gallery = gr.Gallery(label="images (click one)", columns=6, height=160, elem_id="mmu-gallery")
                with gr.Column():
                    question = gr.Textbox(label="question", placeholder="What shape is red?", elem_id="mmu-question")
                    ask = gr.Button("Ask", variant="primary", elem_id="mmu-ask")
                    mmu_denoise = gr.HighlightedText(label="denoising", color_map=COLORS, elem_id="mmu-denoise")
                    mmu_answer = gr.Markdown(elem_id="mmu-answer")
                    mmu_stats = gr.Markdown(elem_id="mmu-stats")
                    mmu_status = gr.Markdown(elem_id="mmu-status")
            examples = gr.State([])

        # -------------------------------------------------------------- text-to-image
        with gr.Tab("Text-to-image", elem_id="tab-t2i"), gr.Row():
            with gr.Column(scale=2):
                caption = gr.Textbox(label="caption", value="a red circle", elem_id="t2i-caption",
                                     info="captions of the built-in world get the shapes checker's verdict")
                generate = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                strip = gr.Image(label="MaskGIT steps (grey: still masked)", elem_id="t2i-strip", height=110,
                                 format="png")
                with gr.Row():
                    picture = gr.Image(label="image", elem_id="t2i-image", height=200, format="png")
                    with gr.Column():
                        verdict = gr.Markdown(elem_id="t2i-verdict")
                        t2i_stats = gr.Markdown(elem_id="t2i-stats")
                        t2i_status = gr.Markdown(elem_id="t2i-status")
            with gr.Column(scale=1), gr.Accordion("sampler settings (ImageSamplerSettings)", open=True):
                img_ctl = _controls(ImageSamplerSettings, "t2i", {})

        # -------------------------------------------------------------- side by side
        with gr.Tab("Compare", elem_id="tab-compare"):
            gr.Markdown("The same message, sampler settings and seed (the Text tab's) on two versions.")
            with gr.Row():
                version_b = gr.Dropdown(choices=choices, value=choices[1][1] if len(choices) > 1 else first,
                                        label="second version", allow_custom_value=True, elem_id="version-b")
                cmp_prompt = gr.Textbox(label="message", elem_id="cmp-prompt")
                cmp_run = gr.Button("Run both", variant="primary", elem_id="cmp-run")
            with gr.Row():
                with gr.Column():
                    a_title = gr.Markdown(elem_id="cmp-a-title")
                    a_tokens = gr.HighlightedText(color_map=COLORS, show_label=False, elem_id="cmp-a")
                    a_stats = gr.Markdown(elem_id="cmp-a-stats")
                with gr.Column():
                    b_title = gr.Markdown(elem_id="cmp-b-title")
                    b_tokens = gr.HighlightedText(color_map=COLORS, show_label=False, elem_id="cmp-b")
                    b_stats = gr.Markdown(elem_id="cmp-b-stats")
            cmp_status = gr.Markdown(elem_id="cmp-status")

        # -------------------------------------------------------------- handlers
        text_names, img_names = list(text_ctl), list(img_ctl)

        def show(uri: str | None) -> str:
            try:
                v = pg.find(uri or "")
                return describe(pg.tracking_uri, pg.versions(), v)
            except Exception as exc:
                return error_line(exc)

        def on_load(request: gr.Request):
            uri = dict(request.query_params).get("model") if request is not None else None
            uri = uri or first
            return gr.update(value=uri), show(uri)

        def on_refresh(uri):
            fresh = [(v.label, v.uri) for v in pg.versions()]
            return gr.update(choices=fresh, value=uri), gr.update(choices=fresh), show(uri)

        demo.load(on_load, outputs=[version, info])
        version.change(show, version, info)
        refresh.click(on_refresh, version, [version, version_b, info])

        def send_message(uri, text, hist, thinking, *values):
            hist = list(hist or [])
            shown = [*hist, {"role": "user", "content": text}, {"role": "assistant", "content": "…"}]
            try:
                settings = settings_from_controls(SamplerSettings, dict(zip(text_names, values)))
                frames = pg.chat(uri, [*hist, {"role": "user", "content": text}], settings, think=thinking)
                for fr in frames:
                    if fr.done:
                        answer = fr.answer or "(empty: the answer's tokens decode to no text)"
                        reply = answer if not fr.thinking else f"*thinking:* {fr.thinking}\n\n{answer}"
                        hist = [*hist, {"role": "user", "content": text}, {"role": "assistant", "content": reply}]
                        yield hist, hist, fr.tokens, fr.stats, "", ""
                    else:
                        yield shown, gr.skip(), fr.tokens, fr.stats, "", gr.skip()
            except Exception as exc:
                yield gr.skip(), gr.skip(), gr.skip(), "", error_line(exc), gr.skip()

        send_event = dict(fn=send_message, inputs=[version, prompt, history, think, *text_ctl.values()],
                          outputs=[chat, history, denoise, text_stats, text_status, prompt])
        send.click(**send_event)
        prompt.submit(**send_event)
        clear.click(lambda: ([], [], None, "", ""), outputs=[chat, history, denoise, text_stats, text_status])

        def pick_source(src):
            if not src:
                return [], [], ""
            try:
                items = pg.examples(src)
                return [(it["image"], it["question"]) for it in items], items, ""
            except Exception as exc:
                return [], [], error_line(exc)

        def pick_image(items, evt: gr.SelectData):
            it = items[evt.index]
            return it["image"], it["question"]

        source.change(pick_source, source, [gallery, examples, mmu_status])
        gallery.select(pick_image, examples, [mmu_image, question])

        def ask_image(uri, image, q, *values):
            try:
                settings = settings_from_controls(SamplerSettings, dict(zip(text_names, values)))
                for fr in pg.understand(uri, image, q, settings):
                    yield fr.tokens, (f"**answer:** {fr.answer}" if fr.done else ""), fr.stats, ""
            except Exception as exc:
                yield gr.skip(), "", "", error_line(exc)

        ask.click(ask_image, [version, mmu_image, question, *text_ctl.values()],
                  [mmu_denoise, mmu_answer, mmu_stats, mmu_status])
        question.submit(ask_image, [version, mmu_image, question, *text_ctl.values()],
                        [mmu_denoise, mmu_answer, mmu_stats, mmu_status])

        def make_image(uri, cap, *values):
            try:
                settings = settings_from_controls(ImageSamplerSettings, dict(zip(img_names, values)))
                for fr in pg.image(uri, cap, settings):
                    if fr.done:
                        v = fr.verdict or "(not a caption of the built-in shapes world: no checker verdict)"
                        yield fr.strip, fr.image, v, fr.stats, ""
                    else:
                        yield fr.strip, None, "", fr.stats, ""
            except Exception as exc:
                yield gr.skip(), gr.skip(), "", "", error_line(exc)

        generate.click(make_image, [version, caption, *img_ctl.values()], [strip, picture, verdict, t2i_stats, t2i_status])

        def compare(uri_a, uri_b, text, thinking, *values):
            out = [gr.skip()] * 6
            try:
                settings = settings_from_controls(SamplerSettings, dict(zip(text_names, values)))
                msgs = [{"role": "user", "content": text}]
                for i, uri in enumerate((uri_a, uri_b)):
                    title = f"**{pg.find(uri).label}** (seed {settings.seed})"
                    for fr in pg.chat(uri, msgs, settings, think=thinking):
                        out[3 * i: 3 * i + 3] = [title, fr.tokens, fr.stats + (f"\n\n**answer:** {fr.answer}"
                                                                               if fr.done else "")]
                        yield (*out, "")
            except Exception as exc:
                yield (*out, error_line(exc))

        cmp_run.click(compare, [version, version_b, cmp_prompt, think, *text_ctl.values()],
                      [a_title, a_tokens, a_stats, b_title, b_tokens, b_stats, cmp_status])
    return demo


def launch(pg: Playground, *, port: int, initial: str | None = None, links: dict[str, str] | None = None,
           block: bool = True):
    """Serve the page on 127.0.0.1:``port`` (no share link, no server-side rendering: nothing leaves the machine)."""
    demo = build_app(pg, initial=initial, links=links)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=HOST, server_port=port, share=False, ssr_mode=False, inbrowser=False, quiet=True,
                prevent_thread_lock=not block, footer_links=[], mcp_server=False,
                allowed_paths=[], theme=gr.themes.Default())
    return demo
