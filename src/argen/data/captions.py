"""Captioned digits (`mnist-captions`): the embedded MNIST digits coloured with named colours and
described in words, "a red seven on a blue background", for text-to-image models.

Each item's composition (digit, foreground colour, background colour) and phrasing are fixed per
(split, index) by a seeded generator independent of the dataset seed, so a split is the same data
on every machine and for every `--seed`. Some compositions never occur in training (`HELD_OUT`:
three colour pairs per digit, 30 of the 300): the split "test-novel" holds the 1,000 test digits
with held-out compositions only, "test" the same digits with training compositions, "train" the
9,000 training digits with training compositions. Each colour pair and each digit is seen in
training (with other partners), so test-novel measures compositional generalisation, not unseen
words. y is the caption's token ids (`CAPTION_LEN`,) padded with 0 (`argen.text`).
"""
from __future__ import annotations

import itertools

import numpy as np

from argen.conditioning import CondSpec
from argen.text import Vocabulary

#: Named colours (RGB 0..255), far apart so a colour is recoverable from the pixels.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = (
    "a {fg} {digit} on a {bg} background",
    "the digit {digit} in {fg} on {bg}",
    "{fg} {digit} on {bg}",
    "a {digit} drawn in {fg} on a {bg} background",
)
#: Longest caption in words (the last phrasing), the length of y.
CAPTION_LEN = 9
#: Ordered (foreground, background) pairs of distinct colours: 30.
COLOR_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.permutations(PALETTE, 2))
#: (digit, fg, bg) compositions kept out of training: three colour pairs per digit.
HELD_OUT: frozenset[tuple[int, str, str]] = frozenset(
    (d, *COLOR_PAIRS[(7 * d + 11 * j) % len(COLOR_PAIRS)]) for d in range(10) for j in range(3))
SPLITS = ("train", "test", "test-novel", "all")  # "all": every digit, training compositions
_SEED = 20261202  # fixes compositions and phrasings; never the dataset seed


def vocabulary() -> Vocabulary:
    """The words of every caption: digit names, colour names, the phrasings' words."""
    words: list[str] = list(DIGITS) + list(PALETTE)
    for phrasing in PHRASINGS:
        for w in phrasing.replace("{fg}", "").replace("{bg}", "").replace("{digit}", "").split():
            if w not in words:
                words.append(w)
    return Vocabulary(words)


def caption_for(digit: int, fg: str, bg: str, phrasing: int = 0) -> str:
    """The caption of a composition in one of the `PHRASINGS`."""
    if not 0 <= int(digit) <= 9 or fg not in PALETTE or bg not in PALETTE or not 0 <= phrasing < len(PHRASINGS):
        raise ValueError(f"expected a digit 0..9, colours in {list(PALETTE)} and a phrasing 0..{len(PHRASINGS) - 1}, "
                         f"given {digit}, {fg!r}, {bg!r}, {phrasing}")
    return PHRASINGS[phrasing].format(fg=fg, bg=bg, digit=DIGITS[int(digit)])


def colorize(grey: np.ndarray, fg: str, bg: str, levels: int = 256) -> np.ndarray:
    """(1, H, W) grey digit -> (3, H, W) uint8: the background colour blended to the foreground by ink."""
    alpha = grey[0].astype(np.float64)[None] / (levels - 1)
    f, b = (np.array(PALETTE[c], dtype=np.float64)[:, None, None] for c in (fg, bg))
    return np.clip(np.rint(b + (f - b) * alpha), 0, 255).astype(np.uint8)


class CaptionSource:
    """Coloured digits with caption tokens (see the module doc); a `Source` for ArgenDataset."""

    levels = 256
    num_classes = None

    def __init__(self, images: np.ndarray, digits: np.ndarray, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"mnist-captions has splits {list(SPLITS)}, given {split!r}")
        self.images, self.digits, self.split = images, digits.astype(np.int64), split
        self.item_shape = (3, *images.shape[-2:])
        self.vocabulary = vocabulary()
        self.cond_spec = CondSpec.tokens(self.vocabulary.size, CAPTION_LEN)
        rng = np.random.default_rng([_SEED, SPLITS.index(split)])
        novel = split == "test-novel"
        choices = {d: [p for p in COLOR_PAIRS if ((d, *p) in HELD_OUT) == novel] for d in range(10)}
        picks = rng.random(len(images))
        self.pairs = [choices[int(d)][int(u * len(choices[int(d)]))] for d, u in zip(self.digits, picks)]
        self.phrasings = rng.integers(0, len(PHRASINGS), size=len(images))
        self.tokens = self.vocabulary.batch([self.caption(i) for i in range(len(images))], CAPTION_LEN).numpy()

    def __len__(self) -> int:
        return len(self.images)

    def composition(self, index: int) -> tuple[int, str, str]:
        """(digit, foreground colour, background colour) of item `index`."""
        return (int(self.digits[index]), *self.pairs[index])

    def caption(self, index: int) -> str:
        d, fg, bg = self.composition(index)
        return caption_for(d, fg, bg, int(self.phrasings[index]))

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        _, fg, bg = self.composition(index)
        return colorize(self.images[index], fg, bg), self.tokens[index]
