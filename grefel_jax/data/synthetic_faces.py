"""Procedurally drawn faces with the 7 RAF-DB expressions (numpy + PIL, no download).

Each face is drawn in a canonical frame (x right, y down, face half-width ~1) from three
independent groups of parameters:

* identity: face shape, skin tone, hair colour and style, eye spacing and size, brow, nose and
  mouth geometry;
* expression: facial action units (FACS-like, intensities in [0, 1]): inner/outer brow raise
  (AU1/AU2), brow lowerer (AU4), upper-lid raise (AU5, negative = droop), lid tightener (AU7),
  cheek raise (AU6), nose wrinkle (AU9), upper-lip raise (AU10), lip-corner pull (AU12),
  lip-corner depressor (AU15), lip stretch (AU20), lip press (AU24), jaw drop (AU26);
* image: pose (in-plane rotation, yaw shift, scale, translation), lighting, background, noise.

Each class has a prototype AU vector (Ekman/FACS); a sample scales it by an intensity drawn
from subtle to strong and adds per-AU jitter. Prototypes share AUs the way real expressions do
(fear and surprise both raise brows and lids and drop the jaw; anger and disgust both lower the
brows; subtle sadness is close to neutral), so those pairs are the natural confusions.

Everything is deterministic from `(seed, index)`; the exact landmark points used to draw the
face are returned in pixel coordinates of the output image.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from grefel_jax.data import classes
from grefel_jax.data.face_geometry import (
    ACTION_UNITS,
    AU_INDEX,
    LANDMARK_NAMES,
    NUM_ACTION_UNITS,
    NUM_LANDMARKS,
    Identity,
    bezier,
    color,
    ellipse,
    face_geometry,
    poly,
    thick_curve,
)

__all__ = [  # the public API; the AU and landmark names are defined in face_geometry
    "ACTION_UNITS",
    "CLASS_NAMES",
    "DEFAULT_DIFFICULTY",
    "LANDMARK_NAMES",
    "NUM_ACTION_UNITS",
    "NUM_LANDMARKS",
    "PARTNERS",
    "PROTOTYPES",
    "Difficulty",
    "label_for_index",
    "render_face",
    "sample_action_units",
    "sample_identity",
]

CLASS_NAMES = classes.SYNTHETIC_FACES


# Prototype AU intensities per class at full strength (FACS descriptions of the basic
# emotions). Order of CLASS_NAMES: surprise, fear, disgust, happiness, sadness, anger, neutral.
_PROTOTYPES = {
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 0.9, "AU26": 0.9},
    "fear": {"AU1": 1.0, "AU2": 0.5, "AU4": 0.6, "AU5": 0.9, "AU20": 0.9, "AU26": 0.45},
    "disgust": {"AU4": 0.5, "AU9": 1.0, "AU10": 0.9, "AU15": 0.35, "AU7": 0.35},
    "happiness": {"AU6": 0.7, "AU12": 1.0, "AU26": 0.2},
    "sadness": {"AU1": 0.9, "AU4": 0.2, "AU5": -0.35, "AU15": 0.9},
    "anger": {"AU4": 1.0, "AU5": 0.3, "AU7": 0.6, "AU24": 0.9, "AU10": 0.2},
    "neutral": {},
}
PROTOTYPES = np.zeros((len(CLASS_NAMES), NUM_ACTION_UNITS), np.float32)
for _c, _name in enumerate(CLASS_NAMES):
    for _au, _v in _PROTOTYPES[_name].items():
        PROTOTYPES[_c, AU_INDEX[_au]] = _v

# Confusable partner of each class (the pairs real FER models confuse most); happiness has
# none. Used to blend prototypes (Difficulty.max_blend).
_PARTNER_NAMES = {
    "surprise": "fear",
    "fear": "surprise",
    "anger": "disgust",
    "disgust": "anger",
    "sadness": "neutral",
    "neutral": "sadness",
    "happiness": "happiness",
}
PARTNERS = np.array([CLASS_NAMES.index(_PARTNER_NAMES[n]) for n in CLASS_NAMES], np.int32)


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Knobs that set how hard the classes are to tell apart.

    Attributes:
      intensity_range: global expression intensity drawn uniformly in this range (1 = the
        full prototype). Low values make subtle expressions that overlap with neutral.
      au_jitter: std of per-AU multiplicative jitter around the scaled prototype.
      au_noise: std of additive AU noise on every unit (also on neutral faces).
      max_blend: the prototype is mixed with its confusable partner's (PARTNERS) by
        m = max_blend * u^2, u ~ U(0, 1) (halved for neutral). Near m = 0.5 the face shows as
        much of the partner as of its own class; with the defaults an MLP on the true AU
        vectors scores ~97.5% (a ceiling for any image model: pixels lose the finest
        differences). Set 0 for separable classes.
    """

    intensity_range: tuple[float, float] = (0.45, 1.0)
    au_jitter: float = 0.2
    au_noise: float = 0.08
    max_blend: float = 0.5


DEFAULT_DIFFICULTY = Difficulty()


def sample_action_units(
    rng: np.random.Generator, label: int, difficulty: Difficulty = DEFAULT_DIFFICULTY
) -> tuple[np.ndarray, float]:
    """AU intensities for one face of class `label`.

    Returns:
      (NUM_ACTION_UNITS,) float32 AU vector, and the global intensity used.
    """
    lo, hi = difficulty.intensity_range
    intensity = float(rng.uniform(lo, hi))
    blend = difficulty.max_blend * float(rng.uniform()) ** 2
    if CLASS_NAMES[label] == "neutral":
        # Neutral's prototype is zero, so its blend is the whole expression: halve it, or
        # neutral/sadness would overlap far more than the other pairs.
        blend *= 0.5
    prototype = (1 - blend) * PROTOTYPES[label] + blend * PROTOTYPES[PARTNERS[label]]
    jitter = 1.0 + difficulty.au_jitter * rng.standard_normal(NUM_ACTION_UNITS)
    aus = prototype * intensity * jitter
    aus = aus + difficulty.au_noise * np.abs(rng.standard_normal(NUM_ACTION_UNITS))
    aus = np.clip(aus, -0.6, 1.3)
    return aus.astype(np.float32), intensity


def sample_identity(identity_seed: int | tuple[int, ...]) -> Identity:
    """The identity of `identity_seed`: the same face shape, skin, hair, eye, brow, nose and
    mouth geometry on every call, whatever else is drawn with it.

    Args:
      identity_seed: anything `np.random.default_rng` accepts; one seed = one identity.

    Returns:
      The Identity (its parameters in canonical units; see `face_geometry.Identity`).
    """
    return Identity(np.random.default_rng(identity_seed))


@functools.cache
def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """(size, size) RGB background: a bilinear blend of four random corner colours."""
    c0 = rng.uniform(20, 235, 3)
    corners = np.clip(c0 + rng.normal(0, 50, (2, 2, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(corners).resize((size, size), Image.BILINEAR)


def render_face(
    seed: int | tuple[int, ...],
    label: int,
    image_size: int = 96,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
    supersample: int | None = None,
    identity: Identity | None = None,
) -> dict[str, np.ndarray]:
    """Draws one face.

    Args:
      seed: anything `np.random.default_rng` accepts; `(dataset_seed, split_id, index)`.
      label: class index in CLASS_NAMES (RAF-DB order).
      image_size: output side S in pixels.
      difficulty: intensity and noise knobs.
      supersample: draw at this multiple of S and downsample (anti-aliasing). None: 2 up to
        S = 128 (thin strokes need it), 1 above (fast enough to generate >= 300 images/s).
      identity: the face's identity (`sample_identity`), so that one identity can be drawn
        many times under other expressions, poses, lighting and backgrounds. None (the
        expression datasets): drawn from `seed` together with everything else, as first
        in the generator's stream, so those datasets are unchanged by this argument.

    Returns:
      dict with `image` (S, S, 3) uint8, `landmarks` (NUM_LANDMARKS, 2) float32 pixel (x, y),
      `action_units` (NUM_ACTION_UNITS,) float32, `intensity` float32 scalar.
    """
    if supersample is None:
        supersample = 2 if image_size <= 128 else 1
    rng = np.random.default_rng(seed)
    ident = Identity(rng) if identity is None else identity
    aus, intensity = sample_action_units(rng, label, difficulty)
    geo = face_geometry(ident, aus)

    # Pose: canonical -> pixel affine (rotation, scale, shift; yaw shifts inner features).
    size = image_size * supersample
    # The face fills most of the frame, like the aligned crops of RAF-DB/AffectNet: the
    # expression must stay visible after the model's 2x sub-sampling (96 -> 48 pixels).
    angle = math.radians(rng.uniform(-10, 10))
    scale = size * rng.uniform(0.36, 0.43)
    yaw = rng.uniform(-0.1, 0.1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    # Canonical (0, 0.12), between the brows and the mouth, lands near the image centre.
    center = size * (0.5 + rng.uniform(-0.05, 0.05, 2)) - (rot @ np.array([0.0, 0.12])) * scale

    def px(points, inner=True):
        p = np.asarray(points, np.float32).reshape(-1, 2).copy()
        if inner:
            p[:, 0] += yaw
        return (p @ rot.T) * scale + center

    canvas = _background(rng, size)
    draw = ImageDraw.Draw(canvas)
    skin, hair = color(ident.skin), color(ident.hair)
    shade = color(ident.skin * 0.72)
    line = color(ident.skin * 0.45)
    w = scale  # stroke widths are proportional to the face scale

    if ident.hair_long:  # hair behind the face
        back = ellipse((0, 0.05), ident.face_w * 1.22, ident.face_h * 1.15, 28)
        back[back[:, 1] > 0.9, 1] = 0.9
        draw.polygon(poly(px(back, False)), fill=hair)
    # Neck, then the face.
    neck = np.array([[-0.45, 0.6], [0.45, 0.6], [0.5, 2.2], [-0.5, 2.2]])
    draw.polygon(poly(px(neck, False)), fill=shade)
    draw.polygon(poly(px(geo["face"], False)), fill=skin)
    # Hair cap over the top of the head, with a fringe.
    cap_t = np.linspace(np.pi, 2 * np.pi, 20)
    cap = np.stack([1.06 * ident.face_w * np.cos(cap_t), 1.08 * ident.face_h * np.sin(cap_t)], 1)
    fringe = np.array(
        [
            [1.06 * ident.face_w, -0.25],
            [0.5, ident.hair_top + ident.hair_fringe * 0.3],
            [0.0, ident.hair_top],
            [-0.5, ident.hair_top - ident.hair_fringe * 0.3],
            [-1.06 * ident.face_w, -0.25],
        ]
    )
    draw.polygon(poly(px(np.concatenate([cap, fringe]), False)), fill=hair)

    # Eyes: sclera, iris, then skin lids drawn over the iris to clip it, then lid lines.
    for eye, pupil, (up, low) in zip(geo["eyes"], geo["pupils"], geo["lids"]):
        draw.polygon(poly(px(eye)), fill=(235, 235, 230))
        iris = ellipse(pupil, 0.055, 0.055, 16)
        draw.polygon(poly(px(iris)), fill=color(ident.iris))
        draw.polygon(poly(px(ellipse(pupil, 0.022, 0.022, 10))), fill=(10, 10, 10))
        top_patch = np.concatenate([up, up[::-1] - np.array([0, 0.09])])
        low_patch = np.concatenate([low, low[::-1] + np.array([0, 0.07])])
        draw.polygon(poly(px(top_patch)), fill=skin)
        draw.polygon(poly(px(low_patch)), fill=skin)
        draw.line(poly(px(up)), fill=line, width=max(1, int(0.025 * w)))
        draw.line(poly(px(low)), fill=shade, width=max(1, int(0.012 * w)))

    # Wrinkles, as FACS describes them: AU4 draws vertical furrows between the brows, AU1
    # (and AU2, wider) horizontal lines across the forehead.
    line_width = max(1, int(0.02 * w))
    brow_r, brow_l = geo["brows"]
    if geo["au"]["AU4"] > 0.15:
        crease = color(ident.skin * (1 - 0.55 * min(geo["au"]["AU4"], 1.0)))
        top = 0.5 * (brow_r[0, 1] + brow_l[0, 1]) - 0.02
        for x in (-0.045, 0.045):
            draw.line(poly(px([[x, top], [x * 0.8, top + 0.09]])), fill=crease, width=line_width)
    if geo["au"]["AU1"] > 0.2:
        crease = color(ident.skin * (1 - 0.4 * min(geo["au"]["AU1"], 1.0)))
        half = 0.14 + 0.18 * min(geo["au"]["AU2"], 1.0)
        top = min(brow_r[:, 1].min(), brow_l[:, 1].min())
        for k in range(2):
            y = top - 0.07 - 0.07 * k
            curve = bezier([-half, y + 0.02], [0, y - 0.015], [half, y + 0.02], 7)
            draw.line(poly(px(curve)), fill=crease, width=line_width)

    # Brows: tapered thick curves.
    widths = ident.brow_w * np.array([1.0, 1.1, 1.1, 1.05, 1.0, 0.9, 0.8, 0.6, 0.4])
    for brow in geo["brows"]:
        draw.polygon(poly(px(thick_curve(brow, widths))), fill=color(ident.hair * 0.55))

    # Nose.
    bridge, tip, nostrils = geo["nose"]
    side_line = np.stack([bridge + [0.05, 0.08], tip + [0.06, -0.04]])
    draw.line(poly(px(side_line)), fill=shade, width=max(1, int(0.02 * w)))
    base = bezier(nostrils[0], tip + [0, 0.06], nostrils[1], 7)
    draw.line(poly(px(base)), fill=line, width=max(1, int(0.022 * w)))
    for n in nostrils:
        draw.polygon(poly(px(ellipse(n, 0.03, 0.018, 8))), fill=color(ident.skin * 0.4))
    if geo["nose_wrinkle"] > 0.15:  # AU9: horizontal creases on the bridge
        strength = min(geo["nose_wrinkle"], 1.0)
        crease = color(ident.skin * (1 - 0.5 * strength))
        for k in range(3):
            y = bridge[1] + 0.05 + 0.05 * k
            draw.line(
                poly(px([[-0.07, y + 0.01], [0, y], [0.07, y + 0.01]])),
                fill=crease,
                width=max(1, int(0.026 * w)),
            )

    # Mouth: lips, then the opening (dark) with teeth when the lips are pulled back.
    draw.polygon(poly(px(geo["mouth_outer"])), fill=color(ident.lipcolor))
    if geo["mouth_open"] > 0.02:
        draw.polygon(poly(px(geo["mouth_inner"])), fill=(55, 18, 22))
        if geo["teeth"]:
            inner = geo["mouth_inner"]
            upper = inner[:10]
            teeth = np.concatenate([upper, upper[::-1] + np.array([0, 0.05])])
            draw.polygon(poly(px(teeth)), fill=(240, 238, 228))
    else:
        draw.line(
            poly(px(geo["mouth_inner"][:10])),
            fill=color(ident.lipcolor * 0.55),
            width=max(1, int(0.02 * w)),
        )

    if supersample > 1:
        canvas = canvas.reduce(supersample)
    image = np.asarray(canvas, np.float32)

    # Lighting: global gain and a directional ramp; then sensor noise.
    r = np.linspace(-1, 1, image_size, dtype=np.float32)
    light_dir = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0, 0.35)
    ramp = (strength * math.cos(light_dir)) * r[None, :] + (strength * math.sin(light_dir)) * r[
        :, None
    ]
    gain = np.float32(rng.uniform(0.7, 1.15)) * (1 + ramp)
    image = image * gain[..., None] + np.float32(rng.uniform(-15, 15))
    noise_std = np.float32(rng.uniform(0, 6))
    image += noise_std * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)

    landmarks = px(geo["landmarks"][:9], False)
    rest = px(geo["landmarks"][9:])
    landmarks = np.concatenate([landmarks, rest]) / supersample
    return {
        "image": image,
        "landmarks": landmarks.astype(np.float32),
        "action_units": aus,
        "intensity": np.float32(intensity),
    }


def label_for_index(index: int) -> int:
    """Class of example `index`: classes cycle, so every split is balanced to within 1."""
    return index % len(CLASS_NAMES)
