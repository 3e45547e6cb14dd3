"""rinna's sentencepiece tokenizer, used directly (never through ``AutoTokenizer``, see model.md §3)."""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm

_SPECIAL_KEYS = ("pad_token", "unk_token", "bos_token", "eos_token", "cls_token", "sep_token", "mask_token")


class Tokenizer:
    """Plain sentencepiece encode/decode on ``spiece.model``: no special tokens are ever added."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        self._sp = spm.SentencePieceProcessor(model_file=str(model_dir / "spiece.model"))
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id = self._sp.pad_id()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self.unk_id = self._sp.unk_id()
        self.special_ids = frozenset(self._special_ids(model_dir / "tokenizer_config.json"))
        # Ids after which decoded text may still change: bytes of a multi-byte character, dropped specials.
        self._open_ended = self.special_ids | {i for i in range(self.vocab_size) if self._sp.is_byte(i)}
        space = self._sp.piece_to_id("\u2581")
        # sentencepiece strips a leading space from the first piece only for models that add a dummy prefix
        # or collapse whitespace; rinna's does neither, so its decode is piece by piece.
        self.decodes_piecewise = space != self.unk_id and self._sp.decode([space]) == " "
        self._piece_texts: dict[int, str] = {}

    def _special_ids(self, config_path: Path) -> set[int]:
        ids = {i for i in range(self.vocab_size) if self._sp.is_control(i) or self._sp.is_unknown(i)}
        ids |= {i for i in (self.pad_id, self.bos_id, self.eos_id, self.unk_id) if i >= 0}
        if config_path.exists():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            for key in _SPECIAL_KEYS:
                piece = config.get(key)
                if isinstance(piece, dict):  # AddedToken serialisation
                    piece = piece.get("content")
                if isinstance(piece, str) and self._sp.piece_to_id(piece) != self.unk_id:
                    ids.add(self._sp.piece_to_id(piece))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as is: whitespace kept, byte fallback, no BOS/EOS."""
        return self._sp.encode(text, out_type=int, add_bos=False, add_eos=False)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special ids dropped (not stripped: the caller strips the final reply)."""
        return self._sp.decode([i for i in ids if i not in self.special_ids])

    def closes_text(self, token_id: int) -> bool:
        """Whether the text decoded up to and including ``token_id`` is final whatever follows (when
        :attr:`decodes_piecewise`): it is a plain piece, not a byte of a character or a special id."""
        return token_id not in self._open_ended

    def text_of(self, ids: list[int]) -> str:
        """:meth:`decode` for ids that start after a closing id and end with one (see :meth:`closes_text`),
        when :attr:`decodes_piecewise`: plain pieces are looked up one by one instead of decoded."""
        if not all(token_id not in self._open_ended for token_id in ids):
            return self.decode(ids)
        texts = self._piece_texts
        for token_id in ids:
            if token_id not in texts:
                texts[token_id] = self._sp.decode([token_id])
        return "".join(texts[token_id] for token_id in ids)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)
