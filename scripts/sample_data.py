"""Deterministic generator of the bundled sample dataset (Amazon 2014 dump format).

The sample stands in for a real Amazon category so the whole pipeline can run offline in
a few minutes. It is synthetic but *learnable*: every item has a category, a colour, a
pattern style, a material, a brand and a price, and these attributes show both in the
metadata text (title, description, category path) and in a small product image (shape per
category, fill colour per colour, drawn pattern per style). Every user has latent tastes
(favourite categories, colours and style) and picks items with probability

    P(item) ∝ popularity(item) ** popularity_exponent × exp(preference_strength × match + noise)

so a recommender that reads the text and image features can beat a most-popular ranking.

Files written under ``out_dir`` (byte-identical for the same arguments):

- ``reviews_Sample_5.json.gz``: one JSON object per line, keys as McAuley's 2014 review
  dumps (``reviewerID, asin, reviewerName, helpful, reviewText, overall, summary,
  unixReviewTime, reviewTime``). The file is *raw*: it holds a few duplicated
  (user, item) pairs and users/items below 5 interactions, so the pipeline's dedupe and
  5-core filter have work to do.
- ``meta_Sample.json.gz``: one Python dict literal per line (``repr``, as the 2014 metadata
  dumps; read with :func:`ast.literal_eval`), keys ``asin, title, price, imUrl, salesRank,
  categories, description, brand``. A few items lack ``description`` or ``imUrl``.
- ``images/<asin>.png``: small RGB product images; ``imUrl`` is the relative URL
  ``images/<asin>.png`` (resolve it against the metadata file's own location). A few of
  these files are deliberately corrupt (garbage or truncated PNG bytes).

Determinism: one :class:`numpy.random.SeedSequence` per ``seed``, spawned into independent
streams per component; gzip members with ``mtime=0`` and an empty file name; PNGs written
by PIL without any text/time chunks; every output sorted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

REVIEWS_FILE = "reviews_Sample_5.json.gz"
META_FILE = "meta_Sample.json.gz"
IMAGES_DIR = "images"
STORE_NAME = "Sample Store"

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
FIRST_DAY = datetime(2012, 1, 1, tzinfo=UTC)
LAST_DAY = datetime(2014, 7, 23, tzinfo=UTC)  # the 2014 dumps end in July 2014
SECONDS_PER_DAY = 86_400


# --------------------------------------------------------------------------------------
# Vocabularies (the item attribute values; sizes of the data come from arguments)
# --------------------------------------------------------------------------------------


class Category(NamedTuple):
    name: str
    subcategories: tuple[str, ...]  # plural, as in a category path
    nouns: tuple[str, ...]  # singular noun per subcategory, as in a title
    materials: tuple[str, ...]
    shape: str  # the image shape drawn for this category
    base_price: float


class Colour(NamedTuple):
    name: str
    rgb: tuple[int, int, int]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "Bags",
        ("Backpacks", "Totes", "Wallets"),
        ("Backpack", "Tote", "Wallet"),
        ("Canvas", "Leather", "Nylon"),
        "square",
        38.0,
    ),
    Category("Shoes", ("Sneakers", "Boots"), ("Sneaker", "Boot"), ("Suede", "Leather", "Mesh"), "triangle", 64.0),
    Category("Hats", ("Caps", "Beanies"), ("Cap", "Beanie"), ("Wool", "Cotton", "Felt"), "circle", 19.0),
    Category(
        "Kitchen",
        ("Mugs", "Bowls", "Teapots"),
        ("Mug", "Bowl", "Teapot"),
        ("Ceramic", "Porcelain", "Stoneware"),
        "diamond",
        16.0,
    ),
    Category(
        "Stationery",
        ("Notebooks", "Pencil Cases"),
        ("Notebook", "Pencil Case"),
        ("Paper", "Linen", "Cork"),
        "tall_rectangle",
        9.0,
    ),
    Category("Home Decor", ("Cushions", "Vases"), ("Cushion", "Vase"), ("Velvet", "Glass", "Cotton"), "hexagon", 27.0),
)

COLOURS: tuple[Colour, ...] = (
    Colour("Crimson", (196, 30, 48)),
    Colour("Navy", (24, 42, 120)),
    Colour("Emerald", (18, 140, 72)),
    Colour("Mustard", (222, 178, 32)),
    Colour("Charcoal", (58, 60, 64)),
    Colour("Ivory", (236, 228, 200)),
    Colour("Teal", (0, 128, 128)),
    Colour("Lavender", (168, 138, 212)),
)

STYLES: tuple[str, ...] = ("Striped", "Dotted", "Plain", "Checked", "Gradient")

STYLE_PHRASES: dict[str, str] = {
    "Striped": "with bold diagonal stripes",
    "Dotted": "covered in small polka dots",
    "Plain": "in a clean solid finish",
    "Checked": "in a classic check pattern",
    "Gradient": "that fades from light to dark",
}

BRAND_NAMES: tuple[str, ...] = (
    "Alderbrook",
    "Brightloom",
    "Cobalt & Pine",
    "Driftwood Co",
    "Elmstead",
    "Foxglove",
    "Granite Lane",
    "Harborline",
    "Ironleaf",
    "Juniper Row",
    "Kestrel",
    "Larkspur",
    "Meadowmere",
    "Northwick",
    "Oakhollow",
    "Pebblestone",
    "Quillfield",
    "Rookwood",
    "Saltmarsh",
    "Thistledown",
    "Umberly",
    "Vantor",
    "Willowby",
    "Yarrowgate",
)

FIRST_NAMES: tuple[str, ...] = (
    "Alice",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Frank",
    "Grace",
    "Hugo",
    "Irene",
    "Jack",
    "Karen",
    "Liam",
    "Maya",
    "Noah",
    "Olivia",
    "Peter",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Umar",
    "Vera",
    "Walter",
    "Xenia",
    "Yusuf",
    "Zoe",
    "Marco",
    "Nina",
    "Oscar",
    "Priya",
)
LAST_NAMES: tuple[str, ...] = (
    "Adams",
    "Baker",
    "Chen",
    "Diaz",
    "Evans",
    "Fischer",
    "Garcia",
    "Hughes",
    "Ito",
    "Jones",
    "Kumar",
    "Lopez",
    "Moreau",
    "Novak",
    "Okafor",
    "Perez",
    "Rossi",
    "Smith",
    "Tanaka",
    "Unger",
    "Varga",
    "Walsh",
    "Young",
    "Zimmer",
)
NICKNAMES: tuple[str, ...] = (
    "shopaholic",
    "bargain hunter",
    "design lover",
    "busy mom",
    "gadget guy",
    "reader",
)


# --------------------------------------------------------------------------------------
# Latent entities
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One product and its true attributes (indices into the vocabularies)."""

    asin: str
    category: int
    subcategory: int
    colour: int
    style: int
    material: int
    brand: int
    price: float
    popularity: float  # relative, Zipf-like; the largest is 1.0
    has_description: bool
    image: str  # "ok", "missing" (no imUrl) or "corrupt" (undecodable file)


@dataclass(frozen=True)
class User:
    """One reviewer and their latent tastes (vocabulary indices)."""

    reviewer_id: str
    name: str
    categories: tuple[int, ...]
    colours: tuple[int, ...]
    style: int


@dataclass(frozen=True)
class Review:
    """One raw interaction (before any dedupe)."""

    user: int
    item: int
    day: int  # days since FIRST_DAY
    rating: int
    helpful: tuple[int, int]
    text: str
    summary: str


# --------------------------------------------------------------------------------------
# Identifiers and names
# --------------------------------------------------------------------------------------


def make_ids(rng: np.random.Generator, n: int, prefix: str, length: int) -> list[str]:
    """``n`` distinct ids ``prefix + length`` uppercase alphanumerics, in draw order."""
    seen: set[str] = set()
    ids: list[str] = []
    while len(ids) < n:
        codes = rng.integers(0, len(ID_ALPHABET), size=length)
        candidate = prefix + "".join(ID_ALPHABET[c] for c in codes)
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


def fake_name(rng: np.random.Generator) -> str:
    """A reviewer display name in one of the shapes seen in the real dumps."""
    first = FIRST_NAMES[rng.integers(len(FIRST_NAMES))]
    last = LAST_NAMES[rng.integers(len(LAST_NAMES))]
    shape = rng.integers(4)
    if shape == 0:
        return f"{first} {last}"
    if shape == 1:
        return f"{first[0]}. {last}"
    if shape == 2:
        return f"{first.lower()}{last[0].lower()}{rng.integers(10, 99)}"
    return f'{first} {last[0]}. "{NICKNAMES[rng.integers(len(NICKNAMES))]}"'


# --------------------------------------------------------------------------------------
# Items and users
# --------------------------------------------------------------------------------------


def zipf_popularity(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like popularity 1/rank**exponent, ranks randomly assigned to the ``n`` items."""
    ranks = rng.permutation(n) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent


def pick_flagged(rng: np.random.Generator, n: int, rate: float, exclude: set[int]) -> set[int]:
    """``round(rate * n)`` distinct indices in ``range(n)`` that are not in ``exclude``."""
    pool = np.array([i for i in range(n) if i not in exclude], dtype=np.int64)
    k = min(len(pool), int(round(rate * n)))
    return set(rng.choice(pool, size=k, replace=False).tolist())


def make_items(
    rng: np.random.Generator,
    n_items: int,
    n_brands: int,
    zipf_exponent: float,
    missing_description_rate: float,
    missing_image_rate: float,
    corrupt_image_rate: float,
) -> list[Item]:
    """Draw ``n_items`` products; each brand makes products in one or two categories."""
    if not 1 <= n_brands <= len(BRAND_NAMES):
        raise ValueError(f"n_brands must be in 1..{len(BRAND_NAMES)}, got {n_brands}")
    asins = make_ids(rng, n_items, "B00", 7)
    popularity = zipf_popularity(rng, n_items, zipf_exponent)
    brand_categories = [
        rng.choice(len(CATEGORIES), size=int(rng.integers(1, 3)), replace=False) for _ in range(n_brands)
    ]
    brand_price_factor = rng.lognormal(0.0, 0.25, size=n_brands)
    no_description = pick_flagged(rng, n_items, missing_description_rate, set())
    no_image = pick_flagged(rng, n_items, missing_image_rate, set())
    corrupt = pick_flagged(rng, n_items, corrupt_image_rate, no_image)

    items = []
    for i in range(n_items):
        brand = int(rng.integers(n_brands))
        category = int(rng.choice(brand_categories[brand]))
        spec = CATEGORIES[category]
        price = spec.base_price * brand_price_factor[brand] * rng.lognormal(0.0, 0.3)
        image = "missing" if i in no_image else "corrupt" if i in corrupt else "ok"
        items.append(
            Item(
                asin=asins[i],
                category=category,
                subcategory=int(rng.integers(len(spec.subcategories))),
                colour=int(rng.integers(len(COLOURS))),
                style=int(rng.integers(len(STYLES))),
                material=int(rng.integers(len(spec.materials))),
                brand=brand,
                price=round(float(price), 2),
                popularity=float(popularity[i]),
                has_description=i not in no_description,
                image=image,
            )
        )
    return items


def make_users(rng: np.random.Generator, n_users: int) -> list[User]:
    """Draw ``n_users`` reviewers with 1-2 favourite categories, 2-3 colours, 1 style.

    Categories are not equally liked: a Dirichlet draw sets how often each is a favourite.
    """
    ids = make_ids(rng, n_users, "A", 13)
    category_weights = rng.dirichlet(np.full(len(CATEGORIES), 4.0))
    users = []
    for u in range(n_users):
        n_cats = int(rng.integers(1, 3))
        n_cols = int(rng.integers(2, 4))
        categories = rng.choice(len(CATEGORIES), n_cats, replace=False, p=category_weights)
        colours = rng.choice(len(COLOURS), n_cols, replace=False)
        users.append(
            User(
                reviewer_id=ids[u],
                name=fake_name(rng),
                categories=tuple(sorted(categories.tolist())),
                colours=tuple(sorted(colours.tolist())),
                style=int(rng.integers(len(STYLES))),
            )
        )
    return users


def match_matrix(users: Sequence[User], items: Sequence[Item]) -> np.ndarray:
    """Taste match in [0, 1] of every (user, item): category 0.5, colour 0.3, style 0.2."""
    item_cat = np.array([it.category for it in items])
    item_col = np.array([it.colour for it in items])
    item_sty = np.array([it.style for it in items])
    fav_cat = np.zeros((len(users), len(CATEGORIES)), dtype=bool)
    fav_col = np.zeros((len(users), len(COLOURS)), dtype=bool)
    for u, user in enumerate(users):
        fav_cat[u, list(user.categories)] = True
        fav_col[u, list(user.colours)] = True
    fav_sty = np.array([user.style for user in users])
    return 0.5 * fav_cat[:, item_cat] + 0.3 * fav_col[:, item_col] + 0.2 * (fav_sty[:, None] == item_sty[None, :])


# --------------------------------------------------------------------------------------
# Interactions
# --------------------------------------------------------------------------------------


def interaction_counts(rng: np.random.Generator, n_users: int, low: int, high: int, mean_extra: float) -> np.ndarray:
    """Per-user review counts: ``low`` plus a geometric excess, capped at ``high``."""
    extra = rng.geometric(1.0 / (1.0 + mean_extra), size=n_users) - 1
    return np.minimum(low + extra, high)


def choose_items(
    rng: np.random.Generator,
    match: np.ndarray,
    popularity: np.ndarray,
    counts: np.ndarray,
    popularity_exponent: float,
    preference_strength: float,
    noise_scale: float,
) -> list[np.ndarray]:
    """Distinct items per user, sampled without replacement ∝ the choice weights.

    Uses the Gumbel-top-k trick on ``log weight + Gumbel``; ``noise_scale`` adds a fixed
    per-(user, item) Gaussian whim on top of the taste match. Each user's picks come back
    in random order (the order becomes their timeline).
    """
    logits = (
        popularity_exponent * np.log(popularity)[None, :]
        + preference_strength * match
        + noise_scale * rng.standard_normal(match.shape)
    )
    keys = logits + rng.gumbel(size=match.shape)
    picks = []
    for u, k in enumerate(counts):
        top = np.argpartition(-keys[u], k - 1)[:k]
        picks.append(rng.permutation(np.sort(top)))
    return picks


def review_days(rng: np.random.Generator, k: int, n_days: int) -> np.ndarray:
    """``k`` distinct increasing days inside a random activity window of the period."""
    span = int(rng.integers(min(n_days, max(3 * k, 120)), n_days + 1))
    start = int(rng.integers(0, n_days - span + 1))
    return start + np.sort(rng.choice(span, size=k, replace=False))


def draw_rating(rng: np.random.Generator, match: float) -> int:
    """A 1-5 star rating that rises with the taste match."""
    return int(np.clip(np.rint(2.3 + 2.6 * match + rng.normal(0.0, 0.8)), 1, 5))


def draw_helpful(rng: np.random.Generator) -> tuple[int, int]:
    """``[helpful votes, total votes]``; most reviews have none."""
    total = int(rng.geometric(0.55)) - 1
    return int(rng.binomial(total, 0.7)), total


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, drawn from ``rng``."""
    return options[int(rng.integers(len(options)))]


def item_noun(item: Item) -> str:
    return CATEGORIES[item.category].nouns[item.subcategory]


def item_title(rng: np.random.Generator, item: Item) -> str:
    """E.g. ``Crimson Striped Canvas Backpack by Alderbrook`` (two title shapes)."""
    spec = CATEGORIES[item.category]
    words = [
        COLOURS[item.colour].name,
        STYLES[item.style],
        spec.materials[item.material],
        item_noun(item),
    ]
    if rng.random() < 0.25:
        words.insert(0, choice(rng, ("Mini", "Large", "Classic", "Everyday")))
    brand = BRAND_NAMES[item.brand]
    if rng.random() < 0.3:
        return f"{brand} {' '.join(words)}"
    return f"{' '.join(words)} by {brand}"


def item_description(rng: np.random.Generator, item: Item) -> str:
    """One to three sentences naming the colour, style, material and brand."""
    spec = CATEGORIES[item.category]
    noun = item_noun(item).lower()
    colour = COLOURS[item.colour].name.lower()
    material = spec.materials[item.material].lower()
    sentences = [f"This {colour} {noun} is made of {material} {STYLE_PHRASES[STYLES[item.style]]}."]
    if rng.random() < 0.6:
        sentences.append(
            choice(
                rng,
                (
                    f"Designed by {BRAND_NAMES[item.brand]} for everyday use.",
                    f"A {BRAND_NAMES[item.brand]} favourite in our {spec.name.lower()} range.",
                    f"Part of the {BRAND_NAMES[item.brand]} {colour} collection.",
                ),
            )
        )
    if rng.random() < 0.4:
        sentences.append(choice(rng, ("Makes a great gift.", "Easy to clean.", "Ships in recyclable packaging.")))
    return " ".join(sentences)


def review_text(rng: np.random.Generator, item: Item, rating: int) -> tuple[str, str]:
    """A short review and summary whose tone follows ``rating``; may mention attributes."""
    noun = item_noun(item).lower()
    colour = COLOURS[item.colour].name.lower()
    style = STYLES[item.style].lower()
    if rating >= 5:
        opener = choice(
            rng, (f"Absolutely love this {noun}.", "Exactly what I was looking for.", "Great quality for the price.")
        )
        summary = choice(rng, ("Five stars", "Love it", f"Great {noun}", f"Beautiful {colour} {noun}"))
    elif rating == 4:
        opener = choice(
            rng, (f"Really nice {noun}, happy with it.", "Good value overall.", f"A solid {noun} that does the job.")
        )
        summary = choice(rng, ("Very nice", f"Good {noun}", "Happy with it"))
    elif rating == 3:
        opener = choice(rng, ("It's okay, nothing special.", f"Decent {noun} but not amazing."))
        summary = choice(rng, ("Okay", "It's fine", "Average"))
    else:
        opener = choice(rng, (f"Disappointed with this {noun}.", "Not what I expected.", "I would not buy this again."))
        summary = choice(rng, ("Not great", "Returned it", f"Meh {noun}"))
    sentences = [opener]
    if rng.random() < 0.5:
        verdict = "looks just like the picture" if rating >= 3 else "is duller than in the photo"
        sentences.append(f"The {colour} colour {verdict}.")
    if rng.random() < 0.35 and style != "plain":
        sentences.append(f"I {'like' if rating >= 3 else 'dislike'} the {style} pattern.")
    if rng.random() < 0.3:
        closing = "Would recommend to a friend." if rating >= 4 else "Shipping took a while."
        sentences.append(choice(rng, ("Arrived quickly.", "Packaging was fine.", closing)))
    return " ".join(sentences), summary


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def make_reviews(
    rng: np.random.Generator,
    users: Sequence[User],
    items: Sequence[Item],
    picks: Sequence[np.ndarray],
    match: np.ndarray,
    duplicate_rate: float,
) -> list[Review]:
    """Reviews for every user's picks on increasing days, plus a few duplicated pairs.

    A duplicate re-reviews one of the user's items on another day, as the real dumps
    occasionally do; the pipeline is expected to keep one review per (user, item).
    """
    n_days = (LAST_DAY - FIRST_DAY).days + 1
    reviews = []
    for u, chosen in enumerate(picks):
        n_dup = int(rng.random() < duplicate_rate * len(chosen))
        dup_items = rng.choice(chosen, size=n_dup, replace=False)
        # duplicates go last, so they fall on later days than their originals
        sequence = np.concatenate([chosen, dup_items]).astype(int)
        days = review_days(rng, len(sequence), n_days)
        for item_idx, day in zip(sequence.tolist(), days.tolist()):
            rating = draw_rating(rng, float(match[u, item_idx]))
            text, summary = review_text(rng, items[item_idx], rating)
            reviews.append(Review(u, item_idx, day, rating, draw_helpful(rng), text, summary))
    return reviews


def review_record(review: Review, users: Sequence[User], items: Sequence[Item]) -> dict:
    """The review as a dict with the 2014 dump's keys, in the dump's key order."""
    when = FIRST_DAY.timestamp() + review.day * SECONDS_PER_DAY
    date = datetime.fromtimestamp(when, tz=UTC)
    user = users[review.user]
    return {
        "reviewerID": user.reviewer_id,
        "asin": items[review.item].asin,
        "reviewerName": user.name,
        "helpful": list(review.helpful),
        "reviewText": review.text,
        "overall": float(review.rating),
        "summary": review.summary,
        "unixReviewTime": int(when),
        "reviewTime": f"{date.month:02d} {date.day}, {date.year}",
    }


def image_url(item: Item) -> str:
    """The relative image URL of ``item`` (resolved against the metadata file's URL)."""
    return f"{IMAGES_DIR}/{item.asin}.png"


def meta_record(rng: np.random.Generator, item: Item, sales_rank: int) -> dict:
    """The item's metadata with the 2014 dump's keys; optional keys may be absent."""
    spec = CATEGORIES[item.category]
    record: dict = {
        "asin": item.asin,
        "title": item_title(rng, item),
        "price": item.price,
    }
    if item.image != "missing":
        record["imUrl"] = image_url(item)
    record["salesRank"] = {STORE_NAME: sales_rank}
    record["categories"] = [[STORE_NAME, spec.name, spec.subcategories[item.subcategory]]]
    if item.has_description:
        record["description"] = item_description(rng, item)
    record["brand"] = BRAND_NAMES[item.brand]
    return record


def sales_ranks(rng: np.random.Generator, items: Sequence[Item]) -> list[int]:
    """Store sales ranks: increasing with falling popularity, with gaps like real ranks."""
    order = sorted(range(len(items)), key=lambda i: (-items[i].popularity, items[i].asin))
    gaps = rng.integers(1, 60, size=len(items))
    ranks = [0] * len(items)
    rank = 0
    for position, i in enumerate(order):
        rank += int(gaps[position])
        ranks[i] = rank
    return ranks


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def shape_mask(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
    """An 'L' mask of the category's shape, slightly jittered in position and scale."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx = size / 2 + rng.uniform(-1.5, 1.5)
    cy = size / 2 + rng.uniform(-1.5, 1.5)
    r = size * rng.uniform(0.36, 0.44)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=255)
    elif shape == "tall_rectangle":
        draw.rectangle((cx - 0.55 * r, cy - r, cx + 0.55 * r, cy + r), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    elif shape == "hexagon":
        angles = np.pi / 3 * np.arange(6)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def pattern_fill(rng: np.random.Generator, rgb: tuple[int, int, int], style: str, size: int) -> Image.Image:
    """A ``size``×``size`` RGB fill: the colour (jittered a little) with the style's pattern."""
    base = np.clip(np.array(rgb, dtype=np.float64) + rng.uniform(-12, 12, size=3), 0, 255)
    y, x = np.mgrid[0:size, 0:size]
    fill = np.broadcast_to(base, (size, size, 3)).copy()
    white = np.array([255.0, 255.0, 255.0])
    if style == "Striped":
        on = ((x + y) // 3) % 2 == 1
        fill[on] = 0.45 * fill[on] + 0.55 * white
    elif style == "Dotted":
        on = ((x % 6 - 2.5) ** 2 + (y % 6 - 2.5) ** 2) <= 2.0
        fill[on] = 0.35 * fill[on] + 0.65 * white
    elif style == "Checked":
        on = ((x // 4) + (y // 4)) % 2 == 1
        fill[on] = 0.55 * fill[on]
    elif style == "Gradient":
        fill *= (1.0 - 0.5 * y / (size - 1))[..., None]
    elif style != "Plain":
        raise ValueError(f"unknown style {style!r}")
    return Image.fromarray(np.rint(fill).astype(np.uint8), "RGB")


def render_image(rng: np.random.Generator, item: Item, size: int) -> Image.Image:
    """The product picture: the category's shape filled with the item's colour/pattern."""
    grey = int(rng.integers(208, 226))
    background = Image.new("RGB", (size, size), (grey, grey, grey))
    fill = pattern_fill(rng, COLOURS[item.colour].rgb, STYLES[item.style], size)
    mask = shape_mask(rng, CATEGORIES[item.category].shape, size)
    return Image.composite(fill, background, mask)


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes with no ancillary (text/time) chunks."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def corrupt_bytes(rng: np.random.Generator, valid_png: bytes, variant: int) -> bytes:
    """Undecodable image bytes: a truncated PNG (even ``variant``) or plain garbage (odd)."""
    if variant % 2 == 0:
        return valid_png[: len(valid_png) // 3]
    return b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, size=24, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_gzip_lines(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` (each plus a newline) as a reproducible gzip file."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for line in lines:
            gz.write(line.encode("utf-8") + b"\n")


def write_images(rng: np.random.Generator, items: Sequence[Item], image_dir: Path, size: int) -> list[str]:
    """Write one PNG per item that has an ``imUrl``; remove stale PNGs; return asins written."""
    image_dir.mkdir(parents=True, exist_ok=True)
    written = []
    corrupt_seen = 0
    for item in sorted(items, key=lambda it: it.asin):
        if item.image == "missing":
            continue
        data = png_bytes(render_image(rng, item, size))
        if item.image == "corrupt":
            data = corrupt_bytes(rng, data, corrupt_seen)
            corrupt_seen += 1
        (image_dir / f"{item.asin}.png").write_bytes(data)
        written.append(item.asin)
    keep = {f"{asin}.png" for asin in written}
    for stale in image_dir.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    return written


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate_sample(
    out_dir: Path,
    *,
    seed: int = 0,
    n_users: int = 1540,
    n_items: int = 620,
    n_brands: int = 20,
    min_interactions: int = 5,
    max_interactions: int = 25,
    mean_extra_interactions: float = 4.5,
    zipf_exponent: float = 0.75,
    popularity_exponent: float = 1.0,
    preference_strength: float = 8.0,
    noise_scale: float = 0.5,
    duplicate_rate: float = 0.002,
    missing_description_rate: float = 0.04,
    missing_image_rate: float = 0.03,
    corrupt_image_rate: float = 0.01,
    image_size: int = 32,
) -> dict:
    """Write the sample dataset into ``out_dir`` and return its statistics.

    The same arguments always produce byte-identical files. Users review between
    ``min_interactions`` and ``max_interactions`` distinct items (``min_interactions``
    plus a geometric excess of mean ``mean_extra_interactions``), chosen with probability
    ∝ ``popularity ** popularity_exponent × exp(preference_strength × match + noise)``,
    where popularity is Zipf with ``zipf_exponent`` and match ∈ [0, 1] scores the item's
    category/colour/style against the user's tastes. ``duplicate_rate`` is the per-review
    chance that a user re-reviews an item. The ``*_rate`` arguments for metadata set
    the share of items without ``description``, without ``imUrl`` and with a corrupt image.

    Returns a JSON-serialisable dict: the ``files`` written (relative to ``out_dir``,
    sorted), ``sha256`` of the two dumps, the raw counts (``n_reviews``, ``n_users``,
    ``n_items`` with metadata, ``n_reviewed_items``, ``n_duplicate_reviews``) and the
    metadata gaps (``n_without_description``, ``n_without_image``,
    ``corrupt_image_asins``).
    """
    if not 1 <= min_interactions <= max_interactions <= n_items:
        raise ValueError("need 1 <= min_interactions <= max_interactions <= n_items")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    item_rng, user_rng, choice_rng, review_rng, meta_rng, image_rng = streams

    items = make_items(
        item_rng, n_items, n_brands, zipf_exponent, missing_description_rate, missing_image_rate, corrupt_image_rate
    )
    users = make_users(user_rng, n_users)
    match = match_matrix(users, items)
    counts = interaction_counts(choice_rng, n_users, min_interactions, max_interactions, mean_extra_interactions)
    popularity = np.array([it.popularity for it in items])
    picks = choose_items(choice_rng, match, popularity, counts, popularity_exponent, preference_strength, noise_scale)
    reviews = make_reviews(review_rng, users, items, picks, match, duplicate_rate)

    records = [review_record(r, users, items) for r in reviews]
    records.sort(key=lambda rec: (rec["asin"], rec["unixReviewTime"], rec["reviewerID"]))
    review_lines = [json.dumps(rec) for rec in records]
    ranks = sales_ranks(meta_rng, items)
    by_asin = sorted(range(len(items)), key=lambda i: items[i].asin)
    meta_lines = [repr(meta_record(meta_rng, items[i], ranks[i])) for i in by_asin]

    write_gzip_lines(out_dir / REVIEWS_FILE, review_lines)
    write_gzip_lines(out_dir / META_FILE, meta_lines)
    image_asins = write_images(image_rng, items, out_dir / IMAGES_DIR, image_size)

    pairs = {(r.user, r.item) for r in reviews}
    return {
        "files": sorted([REVIEWS_FILE, META_FILE] + [f"{IMAGES_DIR}/{a}.png" for a in image_asins]),
        "sha256": {
            REVIEWS_FILE: sha256_of(out_dir / REVIEWS_FILE),
            META_FILE: sha256_of(out_dir / META_FILE),
        },
        "n_reviews": len(reviews),
        "n_users": len({r.user for r in reviews}),
        "n_items": len(items),
        "n_reviewed_items": len({r.item for r in reviews}),
        "n_duplicate_reviews": len(reviews) - len(pairs),
        "n_without_description": sum(not it.has_description for it in items),
        "n_without_image": sum(it.image == "missing" for it in items),
        "corrupt_image_asins": sorted(it.asin for it in items if it.image == "corrupt"),
    }
