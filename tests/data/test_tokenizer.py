import json

import pytest

from attnres.data import BPETokenizer, ByteTokenizer, Corpus, build_tokenizer, tokenizer_from_dict

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
    assert ids == list(TRICKY.encode("utf-8"))
    assert all(0 <= i < tok.vocab_size == 256 for i in ids)
    assert tok.decode(ids) == TRICKY
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a cut-off character decodes, it doesn't raise


def test_byte_dict_round_trip():
    tok = tokenizer_from_dict(json.loads(json.dumps(ByteTokenizer().to_dict())))
    assert isinstance(tok, ByteTokenizer)


def test_bpe_train_round_trip_and_vocab():
    tok = BPETokenizer.train([SAMPLE], vocab_size=300)
    assert tok.vocab_size <= 300
    ids = tok.encode(SAMPLE)
    assert max(ids) < tok.vocab_size
    assert len(ids) < len(SAMPLE.encode("utf-8"))  # merges actually compress
    assert tok.decode(ids) == SAMPLE
    # Text the tokenizer never saw still round-trips: every byte has an id.
    assert tok.decode(tok.encode(TRICKY)) == TRICKY


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
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train([SAMPLE], vocab_size=100)


def test_build_tokenizer():
    corpus = Corpus.from_documents("c", [("a", SAMPLE)])
    assert isinstance(build_tokenizer("byte", corpus, None), ByteTokenizer)
    bpe = build_tokenizer("bpe", corpus, 300)
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size <= 300
    with pytest.raises(ValueError, match="'byte', 'bpe'"):
        build_tokenizer("sentencepiece", corpus, None)
    with pytest.raises(ValueError, match="256"):
        build_tokenizer("byte", corpus, 512)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "word"})
