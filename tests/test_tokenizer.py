import pytest
import torch

import clipag

CORPUS = [
    "a photo of a cat",
    "A PHOTO OF A DOG, on the beach!!!",
    "<|startoftext|>literal special tokens<|endoftext|> in the middle <|endoftext|>",
    "café naïve façade — “quotes” ½ ünïcödé",
    "emoji 🐱🚀👍🏽 and flags 🇫🇷",
    "html &amp; entities &lt;b&gt;bold&lt;/b&gt; &amp;amp;lt; double &#39;escaped&#39;",
    "mojibake: Ã©tÃ© cafÃ©, â€œquotedâ€\x9d",
    "tabs\tand\nnewlines   and    spaces",
    "digits 1234567890 3.14159 1e-5",
    "日本語のテキスト 中文 한국어 العربية עברית",
    "can't won't it's we're I'm you'll they'd",
    "",
    "   ",
    "repeated " * 200,
]


@pytest.mark.parametrize("text", CORPUS)
def test_ids_match_openai(text):
    import clip

    ours = clipag.tokenize(text, truncate=True)
    assert ours.dtype == torch.int32
    assert torch.equal(ours.long(), clip.tokenize(text, truncate=True))


def test_batch_and_context_length():
    import clip

    ours = clipag.tokenize(CORPUS[:5], context_length=32, truncate=True)
    assert ours.shape == (5, 32)
    assert torch.equal(ours.long(), clip.tokenize(CORPUS[:5], context_length=32, truncate=True))


def test_truncate_keeps_eot_last():
    tokens = clipag.tokenize("word " * 100, truncate=True)[0]
    assert tokens[0] == 49406 and tokens[-1] == 49407
    assert (tokens != 0).all()


def test_too_long_raises_like_openai():
    import clip

    text = "word " * 100
    with pytest.raises(RuntimeError) as ours:
        clipag.tokenize(text)
    with pytest.raises(RuntimeError) as theirs:
        clip.tokenize(text)
    assert str(ours.value) == str(theirs.value) == f"Input {text} is too long for context length 77"


def test_literal_special_tokens_are_special():
    tokens = clipag.tokenize("<|endoftext|>")[0]
    assert tokens[:3].tolist() == [49406, 49407, 49407]
