"""Procedural images of the synthetic world: one concept (shape x colour) per class.

Every image varies position, size (radius 0.30-0.45 of the side), rotation, hue, background
colour and texture, and pixel noise, so a classifier has to learn the concept, not a template.
Shapes are chosen to stay distinct under rotation; colours to stay distinct under hue jitter.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross",
          "ring", "crescent", "heart", "arrow", "semicircle")
COLOURS = {  # name -> (hue, saturation, value)
    "red": (0.0, 0.85, 0.90), "green": (0.33, 0.80, 0.75), "blue": (0.61, 0.85, 0.95),
    "yellow": (0.15, 0.85, 0.95), "purple": (0.78, 0.70, 0.80), "orange": (0.07, 0.90, 0.95),
    "cyan": (0.50, 0.80, 0.90), "pink": (0.92, 0.50, 0.95), "white": (0.0, 0.0, 0.97),
    "black": (0.0, 0.0, 0.08),
}
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges


@dataclass(frozen=True)
class Concept:
    """What a class looks like."""

    shape: str
    colour: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Placement:
    """Where the shape of one image sits, in units of the image side (x right, y down)."""

    x: float
    y: float
    radius: float
    rotation: float  # radians


def class_concepts(n_classes: int, n_shapes: int) -> list[Concept]:
    """Class k is shape k % n_shapes in colour k // n_shapes (10 = 5 shapes x 2 colours)."""
    n_shapes = min(n_shapes, n_classes)
    if n_shapes > len(SHAPES) or -(-n_classes // n_shapes) > len(COLOURS):
        raise ValueError(f"{n_classes} classes with {n_shapes} shapes need more than the "
                         f"{len(SHAPES)} shapes x {len(COLOURS)} colours available")
    colours = list(COLOURS)
    return [Concept(SHAPES[k % n_shapes], colours[k // n_shapes]) for k in range(n_classes)]


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    """Vertices of a regular n-gon on the unit circle, (n, 2)."""
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _outline(shape: str) -> list[tuple[np.ndarray, int]]:
    """Polygons in unit coordinates (radius ~1), each with a fill (255 adds, 0 cuts out)."""
    circle = _regular(96)
    if shape == "circle":
        return [(circle, 255)]
    if shape == "square":
        return [(_regular(4, np.pi / 4) * 1.15, 255)]
    if shape == "triangle":
        return [(_regular(3, -np.pi / 2) * 1.1 + [0, 0.15], 255)]
    if shape == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)[:, None]
        return [(_regular(10, -np.pi / 2) * radii, 255)]
    if shape == "cross":
        arm = np.array([[-1, -0.3], [1, -0.3], [1, 0.3], [-1, 0.3]])
        return [(arm, 255), (arm[:, ::-1], 255)]
    if shape == "ring":
        return [(circle, 255), (circle * 0.55, 0)]
    if shape == "crescent":
        return [(circle, 255), (circle * 0.85 + [0.45, -0.1], 0)]
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(np.stack([x, y + 2.5], axis=1) / 15.5, 255)]
    if shape == "arrow":
        return [(np.array([[-1, -0.25], [0.1, -0.25], [0.1, -0.65], [1, 0], [0.1, 0.65],
                           [0.1, 0.25], [-1, 0.25]]), 255)]
    if shape == "semicircle":
        t = np.linspace(0, np.pi, 64)
        return [(np.stack([np.cos(t), 0.4 - np.sin(t) * 1.1], axis=1), 255)]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def shape_mask(shape: str, place: Placement, size: int) -> np.ndarray:
    """Anti-aliased coverage of the shape, float32 (size, size) in [0, 1]."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    c, s = np.cos(place.rotation), np.sin(place.rotation)
    rotate = np.array([[c, -s], [s, c]])
    for points, fill in _outline(shape):
        xy = (points @ rotate.T) * place.radius + [place.x, place.y]
        draw.polygon([tuple(p) for p in (xy * big).tolist()], fill=fill)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _smooth_field(rng: np.random.Generator, size: int, grid: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1], (size, size): a coarse grid upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, size=(grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BILINEAR))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))),
                    dtype=np.float32)


def _background(rng: np.random.Generator, size: int, foreground: np.ndarray) -> np.ndarray:
    """Low-saturation background whose brightness contrasts with the foreground, (S, S, 3)."""
    luminance = float(foreground @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    value = rng.uniform(0.05, 0.45) if luminance > 0.5 else rng.uniform(0.6, 0.95)
    base = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.25), value)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    shade = 0.08 * gradient + 0.06 * _smooth_field(rng, size)
    return np.clip(base + shade[..., None], 0, 1)


def render_image(concept: Concept, size: int, rng: np.random.Generator) -> tuple[np.ndarray, Placement]:
    """One varied image of `concept`: uint8 (size, size, 3) and where its shape sits."""
    radius = rng.uniform(0.30, 0.45)
    slack = max(0.0, 0.5 - 0.8 * radius)
    place = Placement(x=0.5 + rng.uniform(-slack, slack), y=0.5 + rng.uniform(-slack, slack),
                      radius=radius, rotation=rng.uniform(0, 2 * np.pi))
    h, s, v = COLOURS[concept.colour]
    colour = _hsv(h + rng.uniform(-0.025, 0.025), s * rng.uniform(0.85, 1.1), v * rng.uniform(0.85, 1.05))
    background = _background(rng, size, colour)
    surface = np.clip(colour * (1 + 0.06 * _smooth_field(rng, size))[..., None], 0, 1)
    alpha = shape_mask(concept.shape, place, size)[..., None]
    image = background * (1 - alpha) + surface * alpha
    image = image + rng.normal(0, 0.02, size=image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), place


def save_jpeg(pixels: np.ndarray, path: Path, quality: int) -> None:
    """Write an RGB uint8 array as a baseline JPEG (deterministic for the same pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=quality)
