"""Captions for coco-mosaic images, generated from the tiles' categories and grid positions.

Each mosaic gets `per_phrasing` captions in each phrasing (train, val, test), written as
COCO caption annotations {id, image_id, caption} plus `phrasing` and `template`. The three
phrasings use disjoint sentence templates, so validation and test captions are worded in
ways no training caption is (held-out templates, as in compositional caption benchmarks);
nouns (with synonyms), counts, spatial relations and positions are shared by all three.
Examples: "two bags and a sneaker", "a sandal to the left of a coat", "the upper right holds
an eight".
"""

from __future__ import annotations

import string

import numpy as np

from vitdsi.data.captions import PHRASINGS

# (kind, template): 'count' lists every object by category ({list}); 'pair' relates two objects
# ({a} {rel} {b}, needs two); 'place' puts one object in the grid ({a}, {where})
TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (
        ("count", "{list}"),
        ("count", "a mosaic of {list}"),
        ("count", "{list} on a dark background"),
        ("pair", "{a} {rel} {b}"),
        ("pair", "a picture with {a} {rel} {b}"),
        ("place", "{a} in the {where}"),
        ("place", "a grid with {a} in its {where} cell"),
    ),
    "val": (
        ("count", "an image showing {list}"),
        ("pair", "{a} placed {rel} {b}"),
        ("place", "the {where} holds {a}"),
    ),
    "test": (
        ("count", "{list} can be seen here"),
        ("pair", "you can find {a} {rel} {b}"),
        ("place", "{a} sits at the {where}"),
    ),
}

# (singular, plural) names of each category, by the tile source's class name
NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "T-shirt/top": (("t-shirt", "t-shirts"), ("tee", "tees"), ("top", "tops")),
    "Trouser": (("pair of trousers", "pairs of trousers"), ("pair of pants", "pairs of pants")),
    "Pullover": (("pullover", "pullovers"), ("sweater", "sweaters"), ("jumper", "jumpers")),
    "Dress": (("dress", "dresses"), ("gown", "gowns")),
    "Coat": (("coat", "coats"), ("jacket", "jackets")),
    "Sandal": (("sandal", "sandals"),),
    "Shirt": (("shirt", "shirts"), ("button-up shirt", "button-up shirts")),
    "Sneaker": (("sneaker", "sneakers"), ("trainer", "trainers"), ("running shoe", "running shoes")),
    "Bag": (("bag", "bags"), ("handbag", "handbags"), ("purse", "purses")),
    "Ankle boot": (("ankle boot", "ankle boots"), ("boot", "boots")),
    **{
        str(d): ((w, w + "s"), (f"digit {w}", f"digit {w}s"), (str(d), f"{d}s"))
        for d, w in enumerate(
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        )
    },
}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RELATIONS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
ROWS = {"top": ("top", "upper"), "middle": ("middle",), "bottom": ("bottom", "lower")}
COLUMNS = ("left", "centre", "right")


def nouns(class_name: str) -> tuple[tuple[str, str], ...]:
    return NOUNS.get(class_name) or ((class_name.lower(), class_name.lower() + "s"),)


def with_article(noun: str) -> str:
    vowel = noun[0] in "aeiou8" and not noun.startswith("one")
    return f"{'an' if vowel else 'a'} {noun}"


def _count(n: int, forms: tuple[str, str]) -> str:
    if n == 1:
        return with_article(forms[0])
    return f"{NUMBERS[n] if n < len(NUMBERS) else n} {forms[1]}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _third(i: int, grid: int) -> int:
    """0, 1, 2: which third of the grid (top / middle / bottom) the centre of cell i lies in."""
    return min(2, int(3 * (2 * i + 1) / (2 * grid)))


class _Describer:
    """Renders one caption of a mosaic from its objects: categories and (row, column) cells."""

    def __init__(self, class_names: tuple[str, ...], grid: int, rng: np.random.Generator) -> None:
        self.names, self.grid, self.rng = class_names, grid, rng

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def noun(self, category: int) -> str:
        return with_article(self.pick(nouns(self.names[category]))[0])

    def listing(self, cats: np.ndarray) -> str:
        kinds, counts = np.unique(cats, return_counts=True)
        order = self.rng.permutation(len(kinds))
        return _join([_count(int(counts[i]), self.pick(nouns(self.names[kinds[i]]))) for i in order])

    def relation(self, a: tuple[int, int], b: tuple[int, int]) -> str:
        """Where cell a lies relative to cell b."""
        vertical = "above" if a[0] < b[0] else "below" if a[0] > b[0] else None
        horizontal = "left" if a[1] < b[1] else "right" if a[1] > b[1] else None
        words = [self.pick(RELATIONS[d]) for d in (vertical, horizontal) if d]
        return " and ".join(words)

    def where(self, cell: tuple[int, int]) -> str:
        row = ("top", "middle", "bottom")[_third(cell[0], self.grid)]
        col = COLUMNS[_third(cell[1], self.grid)]
        if row == "middle":
            return "centre" if col == "centre" else f"middle {col}"
        return f"{self.pick(ROWS[row])} {col}"

    def caption(self, template: tuple[str, str], cats: np.ndarray, cells: np.ndarray) -> str:
        kind, text = template
        if kind == "count":
            return text.format(list=self.listing(cats))
        if kind == "pair":
            i, j = self.rng.choice(len(cats), size=2, replace=False)
            return text.format(
                a=self.noun(cats[i]),
                rel=self.relation(tuple(cells[i]), tuple(cells[j])),
                b=self.noun(cats[j]),
            )
        i = int(self.rng.integers(len(cats)))
        return text.format(a=self.noun(cats[i]), where=self.where(tuple(cells[i])))


def template_ids() -> dict[str, list[int]]:
    """Each phrasing's templates as indices into the flat template list (the `template` field)."""
    out, k = {}, 0
    for phrasing in PHRASINGS:
        out[phrasing] = list(range(k, k + len(TEMPLATES[phrasing])))
        k += len(TEMPLATES[phrasing])
    return out


def literal_parts(template: str) -> list[str]:
    """The fixed words of a template, between its slots."""
    return [lit for lit, *_ in string.Formatter().parse(template) if lit]


def mosaic_captions(
    categories: np.ndarray, grid: int, class_names: tuple[str, ...], per_phrasing: int, seed: int
) -> list[dict]:
    """COCO caption annotations for mosaics: `categories` int [n, grid*grid] is each cell's category
    (-1 empty, at least one object per mosaic); image ids are 1..n, caption ids 1..M."""
    rng = np.random.default_rng([seed, 0xCA9])  # its own stream: the mosaics' draws are unchanged
    describe = _Describer(class_names, grid, rng)
    ids = template_ids()
    flat = [t for p in PHRASINGS for t in TEMPLATES[p]]
    out = []
    for i, row in enumerate(categories):
        present = np.flatnonzero(row >= 0)
        cats, cells = row[present], np.stack(np.divmod(present, grid), axis=1)
        for phrasing in PHRASINGS:
            usable = [k for k in ids[phrasing] if flat[k][0] != "pair" or len(cats) > 1]
            # distinct templates for an image's captions while there are enough, in a seeded order
            order = [usable[k] for k in rng.permutation(len(usable))]
            for c in range(per_phrasing):
                k = order[c % len(order)]
                out.append(
                    {
                        "id": len(out) + 1,
                        "image_id": i + 1,
                        "caption": describe.caption(flat[k], cats, cells),
                        "phrasing": phrasing,
                        "template": k,
                    }
                )
    return out
