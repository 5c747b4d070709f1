"""Procedural stimuli for the synthetic dataset: coloured shapes on textured backgrounds.

Every image is drawn from a small set of generative factors — category (a shape),
its superordinate class, colour, size, position and orientation — on a noisy grey
background, and gets a caption that names its size, colour and category: 432 distinct
captions (the place, a low-level retinotopic factor, left out). With ``place`` the caption
also says where the shape is (a 3 x 3 grid of places), as a COCO caption describes one
image: 3,888 distinct captions, so a caption embedding tells most of ~1,000 test images
apart (with 432, top-1 retrieval among 1,000 cannot pass ~0.1). Everything is a deterministic
function of ``(seed, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

#: Shape categories and the superordinate class each belongs to.
CATEGORIES: dict[str, str] = {
    "circle": "round",
    "ellipse": "round",
    "ring": "round",
    "square": "angular",
    "diamond": "angular",
    "cross": "angular",
    "triangle": "pointed",
    "star": "pointed",
}

#: Superordinate classes, in a fixed order.
SUPERORDINATES: tuple[str, ...] = ("round", "angular", "pointed")

#: Named colours and their RGB values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 210, 40),
    "purple": (140, 55, 180),
    "orange": (240, 135, 30),
}

#: Named sizes and the shape radius they give, as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.13, "medium": 0.2, "large": 0.28}

_CAPTION_TEMPLATES = (
    "{a} {size} {colour} {category} {place}",
    "{a} {size} {colour} {category} {place} on a grey background",
    "{a} {colour} {category}, {size} in size, {place}",
)

#: Names of the thirds of the positions' range (``sample_factors``: 0.3-0.7 of the side).
_THIRDS = (0.3 + 0.4 / 3, 0.3 + 0.8 / 3)


def place_for(factors: StimulusFactors) -> str:
    """Where the shape is, in words: one of 9 places (thirds of the range of positions)."""
    col = ("left", "centre", "right")[int(np.searchsorted(_THIRDS, factors.x))]
    row = ("top", "middle", "bottom")[int(np.searchsorted(_THIRDS, factors.y))]
    if row == "middle":
        return "in the centre" if col == "centre" else f"on the {col}"
    return f"at the {row}" if col == "centre" else f"at the {row} {col}"


_SUPERSAMPLE = 4


@dataclass(frozen=True)
class StimulusFactors:
    """Generative factors of one image.

    Attributes
    ----------
    category, superordinate, colour, size : str
        Names from :data:`CATEGORIES`, :data:`SUPERORDINATES`, :data:`COLOURS`, :data:`SIZES`.
    x, y : float
        Shape centre as a fraction of the image width / height (0 = left / top).
    orientation : float
        Rotation in degrees, counter-clockwise.
    """

    category: str
    superordinate: str
    colour: str
    size: str
    x: float
    y: float
    orientation: float


def sample_factors(rng: np.random.Generator) -> StimulusFactors:
    """Draw one set of generative factors uniformly at random.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    StimulusFactors
        Positions are in [0.3, 0.7] of the image side, rounded to 3 decimals;
        orientation in [0, 360) degrees, rounded to 0.1.
    """
    category = list(CATEGORIES)[int(rng.integers(len(CATEGORIES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    x, y = (round(float(v), 3) for v in rng.uniform(0.3, 0.7, size=2))
    orientation = round(float(rng.uniform(0.0, 360.0)), 1)
    return StimulusFactors(category, CATEGORIES[category], colour, size, x, y, orientation)


def _regular(n: int, radius: float = 1.0, phase: float = np.pi / 2) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _outlines(category: str) -> list[tuple[np.ndarray, int]]:
    """Polygons (unit radius, centred on 0) and the mask value each is filled with."""
    if category == "circle":
        return [(_regular(64), 255)]
    if category == "ellipse":
        return [(_regular(64) * np.array([1.0, 0.55]), 255)]
    if category == "ring":
        return [(_regular(64), 255), (_regular(64, 0.55), 0)]
    if category == "square":
        return [(np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]), 255)]
    if category == "diamond":
        return [(np.array([[0.0, 1.0], [0.62, 0.0], [0.0, -1.0], [-0.62, 0.0]]), 255)]
    if category == "cross":
        w = 0.32
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1)]
        pts += [(-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
        return [(np.array(pts, dtype=float), 255)]
    if category == "triangle":
        return [(_regular(3), 255)]
    if category == "star":
        outer, inner = _regular(5), _regular(5, 0.42, np.pi / 2 + np.pi / 5)
        return [(np.stack([outer, inner], axis=1).reshape(10, 2), 255)]
    raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORIES)}")


def _shape_alpha(factors: StimulusFactors, image_size: int) -> np.ndarray:
    """Anti-aliased coverage of the shape, shape (image_size, image_size), in [0, 1]."""
    n = image_size * _SUPERSAMPLE
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    theta = np.deg2rad(factors.orientation)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    radius = SIZES[factors.size] * n
    centre = np.array([factors.x * n, factors.y * n])
    for poly, value in _outlines(factors.category):
        # Image y grows downwards: flip so that positive angles turn counter-clockwise.
        pts = (poly @ rot.T) * np.array([1.0, -1.0]) * radius + centre
        draw.polygon([tuple(p) for p in pts.tolist()], fill=value)
    small = mask.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def render_image(factors: StimulusFactors, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the shape described by ``factors`` on a textured, noisy grey background.

    Parameters
    ----------
    factors : StimulusFactors
        What to draw.
    image_size : int
        Side of the square image in pixels.
    place : bool
        Name the place in the caption (:func:`caption_for`).
    rng : numpy.random.Generator
        Source of the background texture and the shading noise.

    Returns
    -------
    numpy.ndarray, shape (image_size, image_size, 3), uint8
        The RGB image.
    """
    shape = (image_size, image_size)
    grey = rng.uniform(105.0, 150.0)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=image_size / 24)
    texture /= texture.std() + 1e-12
    background = grey + 14.0 * texture + 5.0 * rng.standard_normal(shape)
    background = np.repeat(background[..., None], 3, axis=2)
    rgb = np.asarray(COLOURS[factors.colour], dtype=np.float64)
    shading = 1.0 + 0.06 * rng.standard_normal(shape)
    foreground = rgb[None, None, :] * shading[..., None]
    alpha = _shape_alpha(factors, image_size)[..., None]
    image = background * (1.0 - alpha) + foreground * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def caption_for(factors: StimulusFactors, rng: np.random.Generator, place: bool = False) -> str:
    """A caption naming the size, colour and category (and the place) of the shape.

    Parameters
    ----------
    factors : StimulusFactors
        The image's factors.
    rng : numpy.random.Generator
        Picks one of a few caption templates.
    place : bool
        Also name the place (an image-level caption); without it the caption names the
        concept (size, colour, category), as the M/EEG world's THINGS-like concepts need.

    Returns
    -------
    str
        E.g. ``"a large red star"`` (``"a large red star at the top left"`` with place).
    """
    template = _CAPTION_TEMPLATES[int(rng.integers(len(_CAPTION_TEMPLATES)))]
    if not place:
        template = template.replace(", {place}", "").replace(" {place}", "")
    first = template.split()[1].strip("{},")
    word = {"size": factors.size, "colour": factors.colour, "category": factors.category}[first]
    article = "an" if word[0] in "aeiou" else "a"
    return template.format(
        a=article,
        size=factors.size,
        colour=factors.colour,
        category=factors.category,
        place=place_for(factors) if place else "",
    )


def make_stimulus(
    seed: int, index: int, image_size: int, place: bool = False
) -> tuple[StimulusFactors, np.ndarray, str]:
    """Factors, image and caption of stimulus number ``index``, deterministic per seed.

    Parameters
    ----------
    seed : int
        Dataset seed (non-negative).
    index : int
        Stimulus number (1-based, as in ``stim-0001``).
    image_size : int
        Side of the square image in pixels.

    Returns
    -------
    factors : StimulusFactors
    image : numpy.ndarray, shape (image_size, image_size, 3), uint8
    caption : str
    """
    rng = np.random.default_rng([seed, 7001, index])
    factors = sample_factors(rng)
    image = render_image(factors, image_size, rng)
    return factors, image, caption_for(factors, rng, place)


def edge_energy(image: np.ndarray, grid: int = 8) -> np.ndarray:
    """Local edge energy of an image pooled on a ``grid`` x ``grid`` lattice.

    The image is converted to luminance, its squared gradient magnitude is
    averaged within each cell and square-rooted.

    Parameters
    ----------
    image : numpy.ndarray, shape (H, W, 3) or (H, W)
        The image (any numeric dtype; uint8 is scaled to [0, 1]).
    grid : int
        Cells per side.

    Returns
    -------
    numpy.ndarray, shape (grid * grid,), float64
        Row-major over cells (top-left first).
    """
    img = np.asarray(image, dtype=np.float64)
    if np.asarray(image).dtype == np.uint8:
        img = img / 255.0
    lum = img @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img
    gy, gx = np.gradient(lum)
    energy = gx**2 + gy**2
    rows = np.array_split(np.arange(energy.shape[0]), grid)
    cols = np.array_split(np.arange(energy.shape[1]), grid)
    pooled = np.array([[energy[np.ix_(r, c)].mean() for c in cols] for r in rows])
    return np.sqrt(pooled).ravel()
