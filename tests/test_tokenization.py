"""Built-in tokenizer, special-token ids (ours and the official LLaDA ids) and sequence layouts."""

from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mmada.builtin.arithmetic import generate_arithmetic
from mmada.errors import MMaDAError, VocabError
from mmada.models import MMaDAConfig
from mmada.models.configuration import BUILTIN_TOKEN_IDS
from mmada.tokenization import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    SequenceBuilder,
    SpecialTokenIds,
    check_vocab,
    left_pad,
    load_text_tokenizer,
    train_bpe_tokenizer,
)
from mmada.tokenization.special import OFFICIAL_IDS
from mmada.tokenization.text import R2I_PREFIX, THINK_PREFIX
from tests.llada_layout import SHIPPED_TEMPLATE, llada_tokenizer_dir


@pytest.fixture(scope="module")
def tok():
    return load_text_tokenizer("builtin")


def test_builtin_tokenizer_layout(tok):
    assert len(tok) == 1024
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == list(SPECIAL_TOKENS)
    sp = SpecialTokenIds.from_tokenizer(tok)
    assert (sp.bos, sp.eos, sp.mask) == (BUILTIN_TOKEN_IDS["bos_token_id"], BUILTIN_TOKEN_IDS["eos_token_id"],
                                         BUILTIN_TOKEN_IDS["mask_token_id"])
    assert sp.image_offset == 1024
    check_vocab(sp, MMaDAConfig.from_preset("tiny"))
    text = "Ann has 3 apples. <think>3 + 5 = 8.</think> The answer is 8."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_builtin_tokenizer_splits_digits(tok):
    """A number is the same digit ids in a question, a trace and \\boxed{} (what a tiny model can copy)."""
    def digits(s):
        ids = tok(s, add_special_tokens=False)["input_ids"]
        return [t for t in tok.convert_ids_to_tokens(ids) if t.isdigit()], ids

    in_question, q_ids = digits("Ben has 17 cards.")
    in_trace, _ = digits("<think>17 - 12 = 5.</think>")
    in_box, b_ids = digits(" \\boxed{17}")
    assert in_question == ["1", "7"] and in_trace[:2] == ["1", "7"] and in_box == ["1", "7"]
    assert tok.convert_tokens_to_ids(["1", "7"]) == [i for i in q_ids if tok.convert_ids_to_tokens(i).isdigit()]
    assert len(b_ids) <= 6  # "\boxed" is in the corpus: " \", "boxed", "{", "1", "7", "}"
    assert tok.decode(b_ids) == " \\boxed{17}"


def test_reasoning_instructions_are_one_token_that_decodes_to_its_text(tok):
    """MMaDA's two instructions start every reasoning row: one id each, found inside longer text, and not
    special (decoding with skip_special_tokens keeps them, so a printed prompt reads as it was written)."""
    sb = SequenceBuilder(tok)
    for prefix in (THINK_PREFIX, R2I_PREFIX):
        ids = tok(prefix + "Ann has 3 apples.", add_special_tokens=False)["input_ids"]
        assert len(tok(prefix, add_special_tokens=False)["input_ids"]) == 1
        assert tok.decode(ids[:1]) == prefix and tok.decode(ids, skip_special_tokens=True) == prefix + "Ann has 3 apples."
    plain, think = sb.chat_prompt("Ann has 3 apples.", think=False), sb.chat_prompt("Ann has 3 apples.", think=True)
    assert len(think) == len(plain) + 1 and tok.decode(think[5]) == THINK_PREFIX


def test_one_step_questions_put_operands_at_fixed_distances_from_the_end(tok):
    """The built-in phrasing: the same token count for every question with the same number of steps, so the
    starting value and the operand sit at the same distance from the question's end (what a model attending
    by relative position copies from)."""
    lengths, offsets = set(), set()
    for r in generate_arithmetic(300, seed=3, difficulty=1):
        ids = tok(r["question"], add_special_tokens=False)["input_ids"]
        toks = [tok.decode([i]) for i in ids]
        first, op, n = r["thinking"].split()[:3]
        lengths.add(len(ids))
        assert toks[3] == first  # "<name> has ␣ <value>"
        if op in "+-":  # "Then he buys ␣ <n> more <x>." / "Then he gives ␣ <n> <x> away."
            offsets.add(len(toks) - 1 - max(i for i, t in enumerate(toks) if t == n))
    assert lengths == {22} and offsets == {11}


def test_bpe_training_is_deterministic_and_pads_vocab():
    texts = ["a red circle", "two blue squares", "How many apples?"] * 20
    a, b = train_bpe_tokenizer(texts, 400), train_bpe_tokenizer(texts, 400)
    assert a.get_vocab() == b.get_vocab() and len(a) == 400  # small corpus: reserved tokens fill the rest
    with pytest.raises(VocabError, match="too small"):
        train_bpe_tokenizer(texts, 100)


def _llada_like_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with LLaDA's special-token placement (named tokens at the official ids)."""
    named = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336, "<|eot_id|>": 126348,
             "<|start_header_id|>": 126346, "<|end_header_id|>": 126347}
    by_id = {v: k for k, v in named.items()}
    vocab = {by_id.get(i, f"<|reserved_token_{i}|>"): i for i in range(size)}
    vocab["hello"] = 5  # a real word, replacing reserved token 5
    del vocab["<|reserved_token_5|>"]
    t = Tokenizer(models.WordLevel(vocab, unk_token="<|reserved_token_0|>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|startoftext|>", eos_token="<|endoftext|>")


def test_official_ids_resolved_for_llada_tokenizer():
    sp = SpecialTokenIds.from_tokenizer(_llada_like_tokenizer(126349))
    off = SpecialTokenIds.official()
    assert sp.soi == off.soi == 126084 and sp.r2i == 126094 and sp.ipad == 126093 and sp.t2i == 126088
    assert sp.mask == 126336 and sp.eos == 126081 and sp.image_offset == off.image_offset == 126349
    assert sp.start_header == 126346 and sp.end_header == 126347
    # the offset is the tokenizer's length whatever it is (a tokenizer with added tokens moves it)
    assert SpecialTokenIds.from_tokenizer(_llada_like_tokenizer(126400)).image_offset == 126400


def test_llada_tokenizer_from_a_saved_directory(tmp_path):
    """The LLaDA layout, saved and loaded like a checkpoint's tokenizer: offset 126349, 8B config accepted."""
    tok = load_text_tokenizer(str(llada_tokenizer_dir(tmp_path / "llada-tok")))
    assert len(tok) == 126349 and tok.convert_ids_to_tokens(126348) == "<|eot_id|>"
    sp = SpecialTokenIds.from_tokenizer(tok)
    assert sp.image_offset == 126349
    assert (sp.bos, sp.eos, sp.mask, sp.eot, sp.soi, sp.eoi, sp.t2i, sp.mmu, sp.ipad, sp.r2i) == (
        126080, 126081, 126336, 126348, 126084, 126085, 126088, 126089, 126093, 126094)
    cfg8b = MMaDAConfig.from_preset("8b")
    assert (cfg8b.llm_vocab_size, cfg8b.codebook_size, cfg8b.vocab_size) == (126464, 8192, 134656)
    check_vocab(sp, cfg8b)  # 126349 <= 126464 and 126349 + 8192 <= 134656
    sb = SequenceBuilder(tok)
    codes = torch.tensor([[0, 7, 115, 8191]])
    t2i = sb.t2i(["a red circle"], codes, max_text_len=16)
    assert t2i.input_ids[0, t2i.image_mask[0]].tolist() == [126349, 126356, 126464, 134540]
    assert t2i.input_ids[0, -1].item() == 126085 and t2i.input_ids[0, 17].item() == 126084  # <|eoi|>, <|soi|>
    mmu = sb.mmu(codes, ["What color?"], ["red"], max_text_len=40)
    assert mmu.input_ids[0, :7].tolist() == [126089, 126084, 126349, 126356, 126464, 134540, 126085]
    # the text part decodes back, and no text id reaches the image range
    text = mmu.input_ids[0, 7:]
    assert int(text.max()) < 126349 and "What color?" in tok.decode(text)


def test_official_chat_template_replaces_the_shipped_one(tmp_path):
    """Inference, rollouts, evaluation (tokenizer.apply_chat_template via SequenceBuilder) and SFT
    rendering (curation: mmada.data.templates.render) give the same ids, in the official format."""
    from mmada.data.schema import Message
    from mmada.data.specs import TemplateSpec
    from mmada.data.templates import render

    tok_dir = llada_tokenizer_dir(tmp_path / "llada-tok")
    raw = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    assert raw.chat_template == SHIPPED_TEMPLATE  # what the tokenizer ships (blank line after headers)
    tok = load_text_tokenizer(str(tok_dir))
    assert tok.chat_template == CHAT_TEMPLATE
    sb = SequenceBuilder(tok)
    messages = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "  What is 2+3?\n"}]
    expected = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\nWhat is 2+3?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n")
    ids = sb.chat_prompt(messages)
    assert tok.decode(ids) == expected
    assert ids[:2] == [126080, 126346] and ids[-2:] == [126347, sb.encode("\n")[0]]
    prompt, response = render([Message(**m) for m in messages] + [Message(role="assistant", content="5")],
                              TemplateSpec())
    assert prompt == expected and response == "5<|eot_id|>"
    assert sb.encode_rendered(prompt) == ids
    # the template the official generate.py/app.py install, rendered with the same jinja settings
    official = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n'+ message['content'] | trim + "
                "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n' }}")
    raw.chat_template = official
    assert raw.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected


def test_check_vocab_bounds_the_offset():
    sp = SpecialTokenIds.official()
    with pytest.raises(VocabError, match="126349 tokens but the checkpoint's llm_vocab_size is 126340"):
        check_vocab(sp, MMaDAConfig.from_preset("8b", llm_vocab_size=126340))
    # (a validated MMaDAConfig already keeps llm_vocab_size + codebook_size within vocab_size)
    raw = SimpleNamespace(llm_vocab_size=126464, mask_token_id=126336, codebook_size=8192, vocab_size=134500)
    with pytest.raises(VocabError, match=r"image offset 126349 \+ codebook_size 8192 exceeds the checkpoint vocab_size 134500"):
        check_vocab(sp, raw)


def test_layouts_with_official_ids():
    tok = _llada_like_tokenizer(126349)
    sb = SequenceBuilder(tok)
    o = OFFICIAL_IDS
    b = sb.t2i(["hello"], torch.tensor([[0, 7, 8191]]), max_text_len=5)
    expected = [o["[iPAD]"], o["[iPAD]"], o["<|t2i|>"], o["<|startoftext|>"], 5, o["<|endoftext|>"], o["<|soi|>"],
                126349, 126356, 134540, o["<|eoi|>"]]
    assert b.input_ids[0].tolist() == expected
    assert b.attention_mask[0].tolist() == [False, False] + [True] * 9
    assert b.image_mask[0].tolist() == [False] * 7 + [True] * 3 + [False]
    assert b.prompt_mask[0].tolist() == [True] * 7 + [False] * 3 + [True]
    lm = sb.lm(["hello hello"], max_text_len=6)
    assert lm.input_ids[0].tolist() == [126080, 5, 5, 126081, 126081, 126081] and not lm.prompt_mask.any()


def test_check_vocab_mismatch_names_values(tok):
    sp = SpecialTokenIds.from_tokenizer(tok)
    with pytest.raises(VocabError, match="1024 tokens but the checkpoint's llm_vocab_size is 1000"):
        check_vocab(sp, MMaDAConfig.from_preset("tiny", llm_vocab_size=1000, vocab_size=2048))
    with pytest.raises(VocabError, match="mask token id 2 != checkpoint mask_token_id 126336"):
        check_vocab(sp, MMaDAConfig.from_preset("8b"))
    with pytest.raises(VocabError, match="mask token id 2 != checkpoint mask_token_id 7"):
        check_vocab(sp, MMaDAConfig.from_preset("tiny", mask_token_id=7))


def test_chat_and_mmu_prompt_masks(tok):
    sb = SequenceBuilder(tok)
    sp = sb.special
    prompt = sb.chat_prompt("What is 2+3?")
    assert prompt[0] == sp.bos
    assert tok.decode(prompt) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\nWhat is 2+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n"
    )
    rows = sb.chat(["What is 2+3?"], ["5"], max_text_len=40)
    n = len(prompt)
    assert rows.input_ids[0, :n].tolist() == prompt
    assert rows.prompt_mask[0].tolist() == [True] * n + [False] * (40 - n)
    ans = sb.encode("5")
    assert rows.input_ids[0, n : n + len(ans)].tolist() == ans
    assert (rows.input_ids[0, n + len(ans):] == sp.eos).all()  # EOS fill is part of the target
    think = sb.chat_prompt("Q", think=True)
    assert "<think>" in tok.decode(think) and len(think) > len(sb.chat_prompt("Q"))
    codes = torch.tensor([[1, 2, 3, 4]])
    m = sb.mmu(codes, ["What color?"], ["red"], max_text_len=30)
    assert m.input_ids[0, :7].tolist() == [sp.mmu, sp.soi, 1025, 1026, 1027, 1028, sp.eoi]
    assert m.image_mask[0].nonzero().flatten().tolist() == [2, 3, 4, 5]
    assert m.prompt_mask[0, : 7 + len(sb.chat_prompt("What color?"))].all()
    # Generation prompts are left-padded; the image slots move with the padding.
    g = sb.mmu(torch.tensor([[1, 2], [3, 4]]), ["Q", "a much longer question here"])
    for i in range(2):
        start = int((~g.attention_mask[i]).sum()) + 2
        assert g.image_mask[i].nonzero().flatten().tolist() == [start, start + 1]
        assert g.input_ids[i, start - 2].item() == sp.mmu


def test_bad_inputs(tok):
    sb = SequenceBuilder(tok)
    with pytest.raises(MMaDAError, match="mask token"):
        sb.encode("hello <|mdm_mask|> there")
    with pytest.raises(MMaDAError, match="leaves no room"):
        sb.chat(["a long question " * 20], ["x"], max_text_len=10)
    with pytest.raises(MMaDAError, match="2 prompts but 1 answers"):
        sb.chat(["a", "b"], ["x"])
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[True] * 3, [False, False, True]]
