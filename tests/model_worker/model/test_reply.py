"""The incremental reply reader gives exactly what decoding every id each time gives."""

from __future__ import annotations

import random

from model_worker.model.reply import ReplyReader, read_reply

PIECES = ("a cat", " on the table", "\n", "ユーザー:", "システム:", "\nユー", "ザー", " 😀", "龘", "  ", "。", "\n\n")


def test_reading_as_ids_arrive_equals_decoding_them_all(loaded):
    tok = loaded.tokenizer
    assert tok.decodes_piecewise  # rinna's settings: no dummy prefix, whitespace kept
    rng = random.Random(7)
    specials = sorted(tok.special_ids)
    for _ in range(200):
        ids = [i for _ in range(rng.randint(1, 12)) for i in tok.encode(rng.choice(PIECES))]
        for _ in range(rng.randint(0, 2)):  # special ids are dropped by decode, even between bytes
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(specials))
        reader = ReplyReader(tok)
        for end in range(1, len(ids) + 1):
            final = end == len(ids)
            state = reader.read(ids[:end], final=final)
            assert state == read_reply(tok, ids[:end], final=final), ids[:end]
            if state.stopped:
                break


def test_a_marker_split_across_settled_text_and_new_ids_is_found(loaded):
    tok = loaded.tokenizer
    ids = tok.encode("fine thanks") + tok.encode("\nユー") + tok.encode("ザー: next")
    reader = ReplyReader(tok)
    for end in range(1, len(ids) + 1):
        state = reader.read(ids[:end], final=False)
        if state.stopped:
            break
    assert state == read_reply(tok, ids[:end], final=False)
    assert state.stopped and state.text == "fine thanks" and state.kept_ids == len(tok.encode("fine thanks"))
