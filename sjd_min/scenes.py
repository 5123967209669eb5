"""A synthetic text-to-image task for the embedded tiny model: captions from a small grammar,
scenes rendered from them with Pillow, and a checker that tells whether an image shows its caption.

    one object:  "a big red circle on the left"            (where: left, right, top, bottom, center)
    two objects: "a small red circle above a big blue square"   (above, below, to the left of, ...)

A scene is a pure function of its seed (``make(seed)``), so the supply is unlimited and every
sample can be rebuilt. Shapes are flat colours without anti-aliasing on a black background, at
least ``SIZES["small"]`` pixels wide so that a 4x-downsampling VQ keeps their outline.

The checker (``check``) reads an image back without knowing how it was made: every pixel takes
the nearest palette colour; each named object is the largest 4-connected blob of its colour, whose
bounding box gives the size, whose fill ratio (pixels / box area) gives the shape (square 1.0,
circle ~0.77, triangle ~0.53), and whose box centre gives the position. Colours the caption does not
name must be absent. It scores ground-truth renders 100% (tests/test_scenes.py).
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE = 32  # image side in pixels
BACKGROUND = (0, 0, 0)
COLOURS = {  # name -> RGB; pairwise distances >= 130, so a blurred edge never reads as another colour
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 245),
    "yellow": (240, 220, 40),
    "purple": (175, 60, 215),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 10, "big": 16}  # side of the bounding box in pixels
STEP = 2  # objects sit on a 2-px lattice: fewer distinct 4x4 patches for the VQ to tell apart
WHERE = {  # single-object position phrase -> key
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the center": "center",
}
RELATIONS = {  # relation phrase -> key; "A above B": A in the top half, B in the bottom half
    "above": "above",
    "below": "below",
    "to the left of": "left",
    "to the right of": "right",
}


@dataclasses.dataclass(frozen=True)
class Obj:
    size: str  # a key of SIZES
    colour: str  # a key of COLOURS
    shape: str  # one of SHAPES

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # one or two objects (two: distinct colours)
    where: str | None = None  # one object: a value of WHERE
    relation: str | None = None  # two objects: a value of RELATIONS (objects[0] relation objects[1])

    @property
    def caption(self) -> str:
        if len(self.objects) == 1:
            phrase = {v: k for k, v in WHERE.items()}[self.where]
            return f"{self.objects[0].phrase} {phrase}"
        phrase = {v: k for k, v in RELATIONS.items()}[self.relation]
        return f"{self.objects[0].phrase} {phrase} {self.objects[1].phrase}"


def max_caption_words() -> int:
    """Words in the longest caption the grammar makes (two objects and the longest relation)."""
    return 2 * len(Obj("small", "red", "circle").phrase.split()) + max(len(p.split()) for p in RELATIONS)


def vocabulary() -> list[str]:
    """Every word the grammar uses, in a fixed order."""
    words = ["a"] + list(SIZES) + list(COLOURS) + list(SHAPES)
    for phrase in list(WHERE) + list(RELATIONS):
        words += [w for w in phrase.split() if w not in words]
    return list(dict.fromkeys(words))


# ----------------------------------------------------------------------------- captions


def parse(caption: str) -> Scene:
    """The scene a caption describes; ValueError where it is not in the grammar."""
    words = caption.lower().split()

    def obj(ws: list[str]) -> Obj:
        if len(ws) != 4 or ws[0] != "a" or ws[1] not in SIZES or ws[2] not in COLOURS or ws[3] not in SHAPES:
            raise ValueError(
                f"{caption!r}: expected 'a <size> <colour> <shape>' with size in {list(SIZES)}, colour in "
                f"{list(COLOURS)}, shape in {list(SHAPES)}"
            )
        return Obj(ws[1], ws[2], ws[3])

    if len(words) < 4:
        raise ValueError(f"{caption!r} is not a scene caption (e.g. 'a big red circle on the left')")
    first, rest = obj(words[:4]), " ".join(words[4:])
    if rest in WHERE:
        return Scene((first,), where=WHERE[rest])
    for phrase, key in RELATIONS.items():
        if rest.startswith(phrase + " "):
            second = obj(rest[len(phrase) + 1 :].split())
            if second.colour == first.colour:
                raise ValueError(f"{caption!r}: the two objects must have different colours")
            return Scene((first, second), relation=key)
    raise ValueError(
        f"{caption!r}: after the first object expected one of {list(WHERE)} or a relation "
        f"{list(RELATIONS)} and a second object"
    )


def sample_scene(rng: random.Random, p_two: float = 0.6) -> Scene:
    """A random scene: two objects with probability `p_two`."""

    def obj(exclude: str | None = None) -> Obj:
        colour = rng.choice([c for c in COLOURS if c != exclude])
        return Obj(rng.choice(list(SIZES)), colour, rng.choice(SHAPES))

    first = obj()
    if rng.random() < p_two:
        return Scene((first, obj(exclude=first.colour)), relation=rng.choice(list(RELATIONS.values())))
    return Scene((first,), where=rng.choice(list(WHERE.values())))


# ----------------------------------------------------------------------------- rendering


def _box(rng: random.Random, s: int, region: str) -> tuple[int, int]:
    """Top-left corner (on the STEP lattice) of an s x s box inside a region of the image."""
    half, full = IMAGE // 2, IMAGE - s
    x = {"left": (0, half - s), "right": (half, full), "center": (half - s // 2 - 2, half - s // 2 + 2)}
    y = {"top": (0, half - s), "bottom": (half, full), "center": (half - s // 2 - 2, half - s // 2 + 2)}
    (x0, x1), (y0, y1) = x.get(region, (0, full)), y.get(region, (0, full))
    return STEP * rng.randint(x0 // STEP, x1 // STEP), STEP * rng.randint(y0 // STEP, y1 // STEP)


def _draw(draw: ImageDraw.ImageDraw, o: Obj, x: int, y: int) -> None:
    s = SIZES[o.size]
    colour = COLOURS[o.colour]
    x1, y1 = x + s - 1, y + s - 1
    if o.shape == "square":
        draw.rectangle([x, y, x1, y1], fill=colour)
    elif o.shape == "circle":
        draw.ellipse([x, y, x1, y1], fill=colour)
    else:  # triangle pointing up
        draw.polygon([(x + (s - 1) / 2, y), (x, y1), (x1, y1)], fill=colour)


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene as an IMAGE x IMAGE RGB picture; `rng` places the objects inside their regions."""
    img = Image.new("RGB", (IMAGE, IMAGE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if len(scene.objects) == 1:
        o = scene.objects[0]
        _draw(draw, o, *_box(rng, SIZES[o.size], scene.where))
        return img
    a, b = scene.objects
    region_a, region_b = {"above": ("top", "bottom"), "below": ("bottom", "top"),
                          "left": ("left", "right"), "right": ("right", "left")}[scene.relation]
    _draw(draw, a, *_box(rng, SIZES[a.size], region_a))
    _draw(draw, b, *_box(rng, SIZES[b.size], region_b))
    return img


def make(seed: int, p_two: float = 0.6) -> tuple[str, Image.Image]:
    """(caption, image) number `seed` of the task."""
    rng = random.Random(seed)
    scene = sample_scene(rng, p_two)
    return scene.caption, render(scene, rng)


def batch(seeds, p_two: float = 0.6) -> tuple[list[str], torch.Tensor]:
    """Captions and images [b, 3, IMAGE, IMAGE] in [-1, 1] of the scenes numbered `seeds`."""
    captions, pixels = [], []
    for seed in seeds:
        caption, image = make(int(seed), p_two)
        captions.append(caption)
        pixels.append(np.asarray(image))
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return captions, x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images [b, 3, H, W] in [-1, 1] -> uint8 [b, H, W, 3] (what `check` reads)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def eval_captions(n: int = 360, seed: int = 12345) -> list[str]:
    """A fixed evaluation prompt set: a third single-object, two thirds two-object captions, with
    every colour, shape, size, position and relation (drawn from `seed`, separate from training)."""
    rng = random.Random(seed)
    return [sample_scene(rng, p_two=0.0 if i % 3 == 0 else 1.0).caption for i in range(n)]


# ----------------------------------------------------------------------------- the checker


@dataclasses.dataclass(frozen=True)
class Blob:
    area: int  # pixels
    width: int  # bounding box
    height: int
    cx: float  # bounding-box centre (pixels, x right, y down)
    cy: float

    @property
    def size(self) -> str:
        return "small" if max(self.width, self.height) <= (SIZES["small"] + SIZES["big"]) / 2 else "big"

    @property
    def shape(self) -> str:
        fill = self.area / (self.width * self.height)
        return "square" if fill > 0.89 else "circle" if fill > 0.665 else "triangle"


def colour_map(image) -> np.ndarray:
    """Index of the nearest palette colour per pixel: 0 = background, i + 1 = i-th of COLOURS."""
    x = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    palette = np.array([BACKGROUND] + list(COLOURS.values()), dtype=np.float32)  # c 3
    d = ((x[:, :, None, :] - palette[None, None]) ** 2).sum(-1)  # h w c
    return d.argmin(-1)


def largest_blob(mask: np.ndarray) -> Blob | None:
    """The largest 4-connected component of a boolean mask."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        comp, todo = [], deque([(y0, x0)])
        while todo:
            y, x = todo.popleft()
            comp.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    todo.append((yy, xx))
        if len(comp) > len(best):
            best = comp
    if not best:
        return None
    ys, xs = np.array(best).T
    return Blob(len(best), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1),
                float(xs.min() + xs.max() + 1) / 2, float(ys.min() + ys.max() + 1) / 2)


MIN_AREA = 20  # fewer pixels of a colour than this: the object is absent
STRAY_AREA = 15  # this many pixels of an unnamed colour: an extra object


def check(image, caption: str) -> tuple[bool, str]:
    """Whether `image` (PIL or uint8 [H, W, 3]) shows `caption`: (ok, the first failed test or "ok")."""
    scene = parse(caption)
    cmap = colour_map(image)
    names = list(COLOURS)
    blobs = []
    for o in scene.objects:
        blob = largest_blob(cmap == names.index(o.colour) + 1)
        if blob is None or blob.area < MIN_AREA:
            return False, f"no {o.colour} object"
        if blob.size != o.size:
            return False, f"{o.colour} object is {blob.size}, not {o.size}"
        if blob.shape != o.shape:
            return False, f"{o.colour} object is a {blob.shape}, not a {o.shape}"
        blobs.append(blob)
    named = {names.index(o.colour) + 1 for o in scene.objects}
    for i, name in enumerate(names, start=1):
        if i not in named and int((cmap == i).sum()) >= STRAY_AREA:
            return False, f"unexpected {name} object"
    half, margin = IMAGE / 2, 3.0
    if len(blobs) == 1:
        b = blobs[0]
        ok = {"left": b.cx < half - margin, "right": b.cx > half + margin, "top": b.cy < half - margin,
              "bottom": b.cy > half + margin,
              "center": abs(b.cx - half) <= margin + 1 and abs(b.cy - half) <= margin + 1}[scene.where]
        return (True, "ok") if ok else (False, f"object at ({b.cx:.0f}, {b.cy:.0f}) is not {scene.where}")
    a, b = blobs
    gap = 2 * margin
    ok = {"above": b.cy - a.cy > gap, "below": a.cy - b.cy > gap,
          "left": b.cx - a.cx > gap, "right": a.cx - b.cx > gap}[scene.relation]
    return (True, "ok") if ok else (False, f"objects at ({a.cx:.0f}, {a.cy:.0f}) and ({b.cx:.0f}, {b.cy:.0f}) "
                                           f"are not '{scene.relation}'")
