import json

import pytest

from attnres.data import BPETokenizer, ByteTokenizer, build_tokenizer, tokenizer_from_dict
from attnres.data.tokenizer import EOD_TEXT

TRICKY = "  naïve café — 日本語 🙂\ttabs\n\nnew\x00line  "

SAMPLE = "\n".join(
    [
        "Now, fair Hippolyta, our nuptial hour draws on apace; four happy days bring in another moon.",
        "But, O, methinks, how slow this old moon wanes! she lingers my desires.",
        "Four days will quickly steep themselves in night; four nights will quickly dream away the time.",
    ]
    * 20
)


def test_byte_round_trip_and_ids():
    tok = ByteTokenizer()
    ids = tok.encode(TRICKY)
    assert list(ids) == list(TRICKY.encode("utf-8"))
    assert tok.vocab_size == 257 and tok.eod_id == 256  # 256 bytes + the end of a document
    assert tok.decode(ids) == TRICKY
    assert tok.decode([*ids, tok.eod_id]) == TRICKY  # the end of a document is not text
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a cut-off character decodes, it doesn't raise


def test_byte_dict_round_trip():
    tok = tokenizer_from_dict(json.loads(json.dumps(ByteTokenizer().to_dict())))
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 257
    # a checkpoint saved before documents had ends keeps its 256-id vocabulary
    legacy = tokenizer_from_dict({"kind": "byte"})
    assert legacy.vocab_size == 256 and legacy.eod_id is None


def test_bpe_train_round_trip_and_vocab():
    tok = BPETokenizer.train([SAMPLE], vocab_size=300)
    assert tok.vocab_size <= 300
    ids = tok.encode(SAMPLE)
    assert max(ids) < tok.vocab_size
    assert len(ids) < len(SAMPLE.encode("utf-8"))  # merges actually compress
    assert tok.decode(ids) == SAMPLE
    # Text the tokenizer never saw still round-trips: every byte has an id.
    assert tok.decode(tok.encode(TRICKY)) == TRICKY


def test_bpe_end_of_document_id_is_never_text():
    tok = BPETokenizer.train(iter([SAMPLE]), vocab_size=300)  # any iterator: training streams
    assert tok.eod_id is not None and tok.eod_id < tok.vocab_size
    ids = tok.encode(f"a{EOD_TEXT}b")
    assert tok.eod_id not in ids and tok.decode(ids) == f"a{EOD_TEXT}b"
    rebuilt = tokenizer_from_dict(tok.to_dict())
    assert rebuilt.eod_id == tok.eod_id and rebuilt.encode(EOD_TEXT) == tok.encode(EOD_TEXT)


def test_bpe_training_is_deterministic():
    a = BPETokenizer.train([SAMPLE], vocab_size=320)
    b = BPETokenizer.train([SAMPLE], vocab_size=320)
    assert a.to_dict() == b.to_dict()


def test_bpe_dict_round_trip():
    tok = BPETokenizer.train([SAMPLE], vocab_size=300)
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(rebuilt, BPETokenizer)
    assert rebuilt.vocab_size == tok.vocab_size
    assert rebuilt.encode(SAMPLE) == tok.encode(SAMPLE)
    assert rebuilt.encode(TRICKY) == tok.encode(TRICKY)


def test_bpe_vocab_too_small():
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train([SAMPLE], vocab_size=100)


def test_build_tokenizer():
    assert isinstance(build_tokenizer("byte", [SAMPLE], None), ByteTokenizer)
    bpe = build_tokenizer("bpe", [SAMPLE], 300)
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size <= 300
    with pytest.raises(ValueError, match="'byte', 'bpe'"):
        build_tokenizer("sentencepiece", [SAMPLE], None)
    with pytest.raises(ValueError, match="257"):
        build_tokenizer("byte", [SAMPLE], 512)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "word"})


def test_bpe_long_texts_encode_as_whole(monkeypatch):
    from attnres.data import tokenizer as tok_mod

    tok = BPETokenizer.train([SAMPLE], vocab_size=300)
    text = (SAMPLE + "\n  indented\n\n\nx \n y\n") * 30
    whole = tok._tok.encode(text, add_special_tokens=False).ids
    monkeypatch.setattr(tok_mod, "_SEGMENT_CHARS", 50)  # hundreds of segments
    assert tok.encode(text) == whole
    assert tok.encode_batch([text, "short"]) == [whole, tok._tok.encode("short").ids]
