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

CLASS_NAMES = classes.SYNTHETIC_FACES

ACTION_UNITS = (
    "AU1_inner_brow_raise",
    "AU2_outer_brow_raise",
    "AU4_brow_lower",
    "AU5_upper_lid_raise",
    "AU6_cheek_raise",
    "AU7_lid_tighten",
    "AU9_nose_wrinkle",
    "AU10_upper_lip_raise",
    "AU12_lip_corner_pull",
    "AU15_lip_corner_depress",
    "AU20_lip_stretch",
    "AU24_lip_press",
    "AU26_jaw_drop",
)
_AU = {name.split("_")[0]: i for i, name in enumerate(ACTION_UNITS)}
NUM_ACTION_UNITS = len(ACTION_UNITS)

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
        PROTOTYPES[_c, _AU[_au]] = _v

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

# Landmarks (subject's right first): 9 jaw contour, 4+4 eyes, 3+3 brows, 2 pupils, 4 nose, 6 mouth.
LANDMARK_NAMES = (
    *[f"jaw_{i}" for i in range(9)],
    *[f"eye_{s}_{p}" for s in ("r", "l") for p in ("inner", "top", "outer", "bottom")],
    *[f"brow_{s}_{p}" for s in ("r", "l") for p in ("inner", "mid", "outer")],
    "pupil_r",
    "pupil_l",
    "nose_bridge",
    "nose_tip",
    "nostril_r",
    "nostril_l",
    "mouth_corner_r",
    "mouth_corner_l",
    "upper_lip_top",
    "upper_lip_inner",
    "lower_lip_inner",
    "lower_lip_bottom",
)
NUM_LANDMARKS = len(LANDMARK_NAMES)


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

_SKIN_LIGHT = np.array([246, 214, 188], np.float32)
_SKIN_DARK = np.array([92, 60, 42], np.float32)
_HAIR = np.array(
    [[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 160, 95], [150, 60, 30], [150, 150, 150]],
    np.float32,
)
_IRIS = np.array([[60, 40, 25], [40, 80, 140], [70, 110, 70], [25, 20, 20]], np.float32)


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


@functools.cache
def _bezier_weights(n: int) -> np.ndarray:
    """(n, 3) Bernstein weights of a quadratic curve at n evenly spaced t."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return np.concatenate([(1 - t) ** 2, 2 * (1 - t) * t, t**2], axis=1)


def _bezier(a, m, b, n: int = 8) -> np.ndarray:
    """Quadratic curve from a to b passing through m at t=0.5; (n, 2) points."""
    a, m, b = np.asarray(a, np.float32), np.asarray(m, np.float32), np.asarray(b, np.float32)
    control = 2.0 * m - 0.5 * (a + b)
    return _bezier_weights(n) @ np.stack([a, control, b])


def _thick_curve(points: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Polygon of a polyline with per-point half-widths (tapered brows)."""
    d = np.gradient(points, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-6
    upper = points + normal * widths[:, None]
    lower = points - normal * widths[:, None]
    return np.concatenate([upper, lower[::-1]], axis=0)


@functools.cache
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1).astype(np.float32)


def _ellipse(center, rx, ry, n: int = 24) -> np.ndarray:
    return _unit_circle(n) * np.array([rx, ry], np.float32) + np.asarray(center, np.float32)


def _poly(points: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(p) for p in points.tolist()]


def _color(rgb) -> tuple[int, int, int]:
    c = np.clip(np.asarray(rgb), 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2])


class _Identity:
    """Identity parameters of one face (drawn from the rng, in canonical units)."""

    def __init__(self, rng: np.random.Generator):
        self.face_w = rng.uniform(0.88, 1.05)
        self.face_h = rng.uniform(1.18, 1.38)
        self.chin = rng.uniform(0.0, 0.35)  # pointier chin for larger values
        tone = rng.uniform(0.0, 1.0)
        self.skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + rng.normal(0, 6, 3)
        self.hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)
        self.hair_top = rng.uniform(-0.75, -0.45)  # hairline height
        self.hair_long = rng.uniform() < 0.45
        self.hair_fringe = rng.uniform(-0.2, 0.2)
        self.eye_x = rng.uniform(0.32, 0.44)
        self.eye_y = rng.uniform(-0.22, -0.1)
        self.eye_w = rng.uniform(0.2, 0.26)
        self.eye_open = rng.uniform(0.09, 0.12)
        self.iris = _IRIS[rng.integers(len(_IRIS))]
        self.brow_gap = rng.uniform(0.16, 0.23)
        self.brow_w = rng.uniform(0.045, 0.07)
        self.nose_len = rng.uniform(0.3, 0.42)
        self.nose_w = rng.uniform(0.12, 0.18)
        self.mouth_y = rng.uniform(0.5, 0.62)
        self.mouth_w = rng.uniform(0.25, 0.34)
        self.lip = rng.uniform(0.035, 0.06)
        lip_tint = np.array([1.0, 0.62, 0.62]) * rng.uniform(0.75, 0.95)
        self.lip_color = self.skin * lip_tint + np.array([25, 0, 5])


def _face_geometry(ident: _Identity, aus: np.ndarray) -> dict[str, np.ndarray]:
    """All drawn shapes and landmarks in the canonical frame for identity + AUs."""
    au = {k: float(aus[i]) for k, i in _AU.items()}
    g: dict[str, np.ndarray] = {}
    jaw = au["AU26"]

    # Face contour: ellipse whose lower half stretches with the jaw drop.
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x = ident.face_w * np.cos(t)
    sin_t = np.sin(t)
    lower = sin_t > 0
    y = ident.face_h * sin_t
    y[lower] *= 1.0 + 0.12 * jaw
    x[lower] *= 1.0 - ident.chin * sin_t[lower] ** 4
    g["face"] = np.stack([x, y], 1)
    jaw_t = np.linspace(0.05 * np.pi, 0.95 * np.pi, 9)
    jy = ident.face_h * np.sin(jaw_t) * (1.0 + 0.12 * jaw)
    jx = ident.face_w * np.cos(jaw_t) * (1.0 - ident.chin * np.sin(jaw_t) ** 4)
    landmarks = [np.stack([jx, jy], 1)]

    # Eyes (side s = +1 image-left = subject's right when x < 0).
    eyes, pupils, lids = [], [], []
    for side in (-1.0, 1.0):
        cx, cy = side * ident.eye_x, ident.eye_y
        hw = ident.eye_w / 2
        upper = ident.eye_open * (1 + 0.9 * au["AU5"] - 0.55 * au["AU7"] - 0.2 * au["AU6"])
        lower = 0.55 * ident.eye_open * (1 - 0.6 * au["AU6"] - 0.5 * au["AU7"] + 0.3 * au["AU5"])
        upper, lower = max(upper, 0.012), max(lower, 0.008)
        inner = np.array([cx - side * hw, cy + 0.005])
        outer = np.array([cx + side * hw, cy - 0.01])
        top = np.array([cx, cy - upper])
        bottom = np.array([cx, cy + lower])
        up_curve = _bezier(inner, top, outer, 9)
        low_curve = _bezier(outer, bottom, inner, 9)
        eyes.append(np.concatenate([up_curve, low_curve[1:-1]]))
        lids.append((up_curve, low_curve))
        pupils.append(np.array([cx, cy + 0.2 * (lower - upper)]))
        landmarks.append(np.stack([inner, top, outer, bottom]))
    g["eyes"] = eyes
    g["lids"] = lids
    g["pupils"] = pupils

    # Brows: inner end raised by AU1 and lowered/pulled in by AU4; outer raised by AU2.
    brows = []
    for side in (-1.0, 1.0):
        base_y = ident.eye_y - ident.brow_gap
        inner = np.array(
            [
                side * (ident.eye_x - 0.55 * ident.eye_w) - side * 0.09 * au["AU4"],
                base_y + 0.02 - 0.24 * au["AU1"] + 0.22 * au["AU4"],
            ]
        )
        mid = np.array(
            [
                side * ident.eye_x,
                base_y - 0.04 - 0.08 * au["AU1"] - 0.12 * au["AU2"] + 0.08 * au["AU4"],
            ]
        )
        outer = np.array(
            [side * (ident.eye_x + 0.62 * ident.eye_w), base_y + 0.01 - 0.15 * au["AU2"]]
        )
        brows.append(_bezier(inner, mid, outer, 9))
        landmarks.append(np.stack([inner, mid, outer]))
    g["brows"] = brows
    landmarks.append(np.stack(pupils))

    # Nose: bridge line, tip, nostrils raised and flared by AU9/AU10.
    tip_y = ident.eye_y + ident.nose_len - 0.04 * au["AU9"]
    flare = ident.nose_w * (1 + 0.25 * au["AU9"])
    bridge = np.array([0.0, ident.eye_y + 0.02])
    tip = np.array([0.0, tip_y])
    nostrils = [np.array([side * flare / 2, tip_y + 0.03 - 0.02 * au["AU10"]]) for side in (-1, 1)]
    g["nose"] = (bridge, tip, nostrils)
    g["nose_wrinkle"] = au["AU9"]
    landmarks.append(np.stack([bridge, tip, *nostrils]))

    # Mouth: corners pulled up/out (AU12), down (AU15), sideways (AU20); lips pressed thin
    # (AU24); upper lip raised (AU10); jaw dropped (AU26).
    my = ident.mouth_y + 0.08 * jaw
    half_w = ident.mouth_w * (1 + 0.22 * au["AU12"] + 0.3 * au["AU20"] - 0.18 * au["AU24"])
    corner_y = my - 0.14 * au["AU12"] + 0.22 * au["AU15"] + 0.02 * au["AU20"]
    lip = ident.lip * (1 - 0.65 * min(au["AU24"], 1.0))
    open_ = 0.34 * jaw + 0.08 * au["AU10"]
    upper_inner = my - 0.5 * open_ * 0.25 - 0.09 * au["AU10"] - 0.015 * au["AU12"]
    lower_inner = my + open_ * 0.75
    # A smile curves the opening upward: the lip centres sit below the raised corners.
    upper_inner += 0.35 * max(my - corner_y, 0.0)
    lower_inner += 0.6 * max(my - corner_y, 0.0) - 0.3 * max(corner_y - my, 0.0)
    upper_top = upper_inner - lip * 1.1 - 0.01
    lower_bottom = lower_inner + lip * 1.4 + 0.005
    corners = [np.array([side * half_w, corner_y]) for side in (-1, 1)]
    g["mouth_outer"] = np.concatenate(
        [
            _bezier(corners[0], [0, upper_top], corners[1], 10),
            _bezier(corners[1], [0, lower_bottom], corners[0], 10)[1:-1],
        ]
    )
    g["mouth_inner"] = np.concatenate(
        [
            _bezier(corners[0], [0, upper_inner], corners[1], 10),
            _bezier(corners[1], [0, lower_inner], corners[0], 10)[1:-1],
        ]
    )
    g["mouth_open"] = lower_inner - upper_inner
    # Teeth show when the lip corners are pulled back (smile, fear's stretch); disgust's
    # raised upper lip leaves a dark gap instead.
    g["teeth"] = max(au["AU12"], au["AU20"]) > 0.35
    landmarks.append(
        np.stack(
            [
                corners[0],
                corners[1],
                [0, upper_top],
                [0, upper_inner],
                [0, lower_inner],
                [0, lower_bottom],
            ]
        )
    )
    g["landmarks"] = np.concatenate(landmarks).astype(np.float32)
    g["au"] = au
    return g


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
) -> dict[str, np.ndarray]:
    """Draws one face.

    Args:
      seed: anything `np.random.default_rng` accepts; `(dataset_seed, split_id, index)`.
      label: class index in CLASS_NAMES (RAF-DB order).
      image_size: output side S in pixels.
      difficulty: intensity and noise knobs.
      supersample: draw at this multiple of S and downsample (anti-aliasing). None: 2 up to
        S = 128 (thin strokes need it), 1 above (fast enough to generate >= 300 images/s).

    Returns:
      dict with `image` (S, S, 3) uint8, `landmarks` (NUM_LANDMARKS, 2) float32 pixel (x, y),
      `action_units` (NUM_ACTION_UNITS,) float32, `intensity` float32 scalar.
    """
    if supersample is None:
        supersample = 2 if image_size <= 128 else 1
    rng = np.random.default_rng(seed)
    ident = _Identity(rng)
    aus, intensity = sample_action_units(rng, label, difficulty)
    geo = _face_geometry(ident, aus)

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
    skin, hair = _color(ident.skin), _color(ident.hair)
    shade = _color(ident.skin * 0.72)
    line = _color(ident.skin * 0.45)
    w = scale  # stroke widths are proportional to the face scale

    if ident.hair_long:  # hair behind the face
        back = _ellipse((0, 0.05), ident.face_w * 1.22, ident.face_h * 1.15, 28)
        back[back[:, 1] > 0.9, 1] = 0.9
        draw.polygon(_poly(px(back, False)), fill=hair)
    # Neck, then the face.
    neck = np.array([[-0.45, 0.6], [0.45, 0.6], [0.5, 2.2], [-0.5, 2.2]])
    draw.polygon(_poly(px(neck, False)), fill=shade)
    draw.polygon(_poly(px(geo["face"], False)), fill=skin)
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
    draw.polygon(_poly(px(np.concatenate([cap, fringe]), False)), fill=hair)

    # Eyes: sclera, iris, then skin lids drawn over the iris to clip it, then lid lines.
    for eye, pupil, (up, low) in zip(geo["eyes"], geo["pupils"], geo["lids"]):
        draw.polygon(_poly(px(eye)), fill=(235, 235, 230))
        iris = _ellipse(pupil, 0.055, 0.055, 16)
        draw.polygon(_poly(px(iris)), fill=_color(ident.iris))
        draw.polygon(_poly(px(_ellipse(pupil, 0.022, 0.022, 10))), fill=(10, 10, 10))
        top_patch = np.concatenate([up, up[::-1] - np.array([0, 0.09])])
        low_patch = np.concatenate([low, low[::-1] + np.array([0, 0.07])])
        draw.polygon(_poly(px(top_patch)), fill=skin)
        draw.polygon(_poly(px(low_patch)), fill=skin)
        draw.line(_poly(px(up)), fill=line, width=max(1, int(0.025 * w)))
        draw.line(_poly(px(low)), fill=shade, width=max(1, int(0.012 * w)))

    # Wrinkles, as FACS describes them: AU4 draws vertical furrows between the brows, AU1
    # (and AU2, wider) horizontal lines across the forehead.
    line_width = max(1, int(0.02 * w))
    brow_r, brow_l = geo["brows"]
    if geo["au"]["AU4"] > 0.15:
        crease = _color(ident.skin * (1 - 0.55 * min(geo["au"]["AU4"], 1.0)))
        top = 0.5 * (brow_r[0, 1] + brow_l[0, 1]) - 0.02
        for x in (-0.045, 0.045):
            draw.line(_poly(px([[x, top], [x * 0.8, top + 0.09]])), fill=crease, width=line_width)
    if geo["au"]["AU1"] > 0.2:
        crease = _color(ident.skin * (1 - 0.4 * min(geo["au"]["AU1"], 1.0)))
        half = 0.14 + 0.18 * min(geo["au"]["AU2"], 1.0)
        top = min(brow_r[:, 1].min(), brow_l[:, 1].min())
        for k in range(2):
            y = top - 0.07 - 0.07 * k
            curve = _bezier([-half, y + 0.02], [0, y - 0.015], [half, y + 0.02], 7)
            draw.line(_poly(px(curve)), fill=crease, width=line_width)

    # Brows: tapered thick curves.
    widths = ident.brow_w * np.array([1.0, 1.1, 1.1, 1.05, 1.0, 0.9, 0.8, 0.6, 0.4])
    for brow in geo["brows"]:
        draw.polygon(_poly(px(_thick_curve(brow, widths))), fill=_color(ident.hair * 0.55))

    # Nose.
    bridge, tip, nostrils = geo["nose"]
    side_line = np.stack([bridge + [0.05, 0.08], tip + [0.06, -0.04]])
    draw.line(_poly(px(side_line)), fill=shade, width=max(1, int(0.02 * w)))
    base = _bezier(nostrils[0], tip + [0, 0.06], nostrils[1], 7)
    draw.line(_poly(px(base)), fill=line, width=max(1, int(0.022 * w)))
    for n in nostrils:
        draw.polygon(_poly(px(_ellipse(n, 0.03, 0.018, 8))), fill=_color(ident.skin * 0.4))
    if geo["nose_wrinkle"] > 0.15:  # AU9: horizontal creases on the bridge
        strength = min(geo["nose_wrinkle"], 1.0)
        crease = _color(ident.skin * (1 - 0.5 * strength))
        for k in range(3):
            y = bridge[1] + 0.05 + 0.05 * k
            draw.line(
                _poly(px([[-0.07, y + 0.01], [0, y], [0.07, y + 0.01]])),
                fill=crease,
                width=max(1, int(0.026 * w)),
            )

    # Mouth: lips, then the opening (dark) with teeth when the lips are pulled back.
    draw.polygon(_poly(px(geo["mouth_outer"])), fill=_color(ident.lip_color))
    if geo["mouth_open"] > 0.02:
        draw.polygon(_poly(px(geo["mouth_inner"])), fill=(55, 18, 22))
        if geo["teeth"]:
            inner = geo["mouth_inner"]
            upper = inner[:10]
            teeth = np.concatenate([upper, upper[::-1] + np.array([0, 0.05])])
            draw.polygon(_poly(px(teeth)), fill=(240, 238, 228))
    else:
        draw.line(
            _poly(px(geo["mouth_inner"][:10])),
            fill=_color(ident.lip_color * 0.55),
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
