import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptlab.tokenizers import CharTokenizer, TokenizerError, tokenizer_from_dict, train_tokenizer


def test_round_trip_on_shakespeare(shakespeare_text):
    tok = train_tokenizer("char", shakespeare_text)
    assert tok.vocab_size == 65
    ids = tok.encode(shakespeare_text[:5000])
    assert tok.decode(ids) == shakespeare_text[:5000]
    assert tok.encode_array(shakespeare_text).tolist()[:5000] == ids


@given(st.text(min_size=1))
def test_round_trip_any_text(text):
    tok = CharTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode(text) == tok.encode(text)


def test_unknown_characters_are_named():
    tok = CharTokenizer.train("abc")
    with pytest.raises(TokenizerError, match=r"2 character\(s\) not in the char vocabulary of 3: 'x', 'é'"):
        tok.encode("abxé")


def test_stream_decoder_emits_text_as_tokens_arrive():
    tok = CharTokenizer.train("hello world")
    dec = tok.decoder()
    out = "".join(dec.push(i) for i in tok.encode("hello")) + dec.flush()
    assert out == "hello"
