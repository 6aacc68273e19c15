"""Caption text <-> token ids: a closed, word-level vocabulary.

Why word-level and not a trained subword tokenizer (HF `tokenizers`): the captions argen ships
(`mnist-captions`) use a few dozen words, all of which a model sees in training. A subword model
trained on them learns exactly those words, adds a dependency and a training step, and would split an
unknown word into pieces the model never saw together; a closed vocabulary instead refuses an
unknown word with a message naming it and the words it knows, which is what a user typing a prompt
needs. The vocabulary is stored in every run trained on captions (config.json "vocabulary"), so a
prompt is encoded exactly as the training captions were.

Ids: 0 = "<pad>" (padding, masked out of attention), 1 = "<null>" (the empty caption: the
unconditional input classifier-free guidance runs on), the words from 2 on, in the order given.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

PAD = 0
NULL = 1
SPECIALS = ("<pad>", "<null>")
_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    """The lower-cased words of `text` (punctuation and spacing ignored)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a caption string, given {type(text).__name__}")
    return _WORD.findall(text.lower())


class Vocabulary:
    """A fixed word list; `encode` refuses words outside it (see the module doc)."""

    def __init__(self, words: Iterable[str]) -> None:
        words = list(words)
        bad = [w for w in words if not isinstance(w, str) or words_of(w) != [w]]
        if bad:
            raise ValueError(f"vocabulary words must be single lower-case words, given {bad[:5]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be distinct")
        if not words:
            raise ValueError("a vocabulary needs at least one word")
        self.words: tuple[str, ...] = tuple(words)
        self._ids = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        """Token ids are in [0, size): the specials and the words."""
        return len(SPECIALS) + len(self.words)

    def encode(self, text: str) -> list[int]:
        """Token ids of the words of `text`; an unknown word is a ValueError naming it."""
        words = words_of(text)
        if not words:
            raise ValueError(f"expected a caption with at least one word, given {text!r}")
        unknown = [w for w in words if w not in self._ids]
        if unknown:
            raise ValueError(f"unknown word(s) {unknown} in {text!r}; the known words are: {', '.join(self.words)}")
        return [self._ids[w] for w in words]

    def batch(self, texts: Sequence[str], length: int) -> Tensor:
        """(B, length) long ids, padded with PAD; a caption longer than `length` words is an error."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode(t) for t in texts]
        long = [t for t, r in zip(texts, rows) if len(r) > length]
        if long:
            raise ValueError(f"expected captions of at most {length} words, given {long[0]!r} "
                             f"({len(self.encode(long[0]))} words)")
        out = torch.full((len(rows), length), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def null(self, batch: int, length: int) -> Tensor:
        """(batch, length) null captions: [NULL, PAD, ...]."""
        out = torch.full((batch, length), PAD, dtype=torch.long)
        out[:, 0] = NULL
        return out

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The words of `ids`, padding dropped ("<null>" for the null caption)."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        names = SPECIALS + self.words
        bad = [i for i in values if not 0 <= int(i) < self.size]
        if bad:
            raise ValueError(f"expected token ids in [0, {self.size - 1}], given {bad[:5]}")
        return " ".join(names[int(i)] for i in values if int(i) != PAD)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "words", "words": list(self.words)}

    @classmethod
    def from_dict(cls, d: Any) -> Vocabulary:
        if not isinstance(d, dict) or d.get("kind") != "words" or not isinstance(d.get("words"), list):
            raise ValueError(f"expected a vocabulary record {{'kind': 'words', 'words': [...]}}, given {d!r:.80}")
        return cls(d["words"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.words == self.words

    def __hash__(self) -> int:
        return hash(self.words)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self.words)} words)"


__all__ = ["NULL", "PAD", "SPECIALS", "Vocabulary", "words_of"]
