"""The drawing geometry of the synthetic faces: identity + action units -> shapes and landmarks.

`face_geometry(Identity(rng), aus)` returns every polygon `synthetic_faces.render_face` draws,
in the canonical face frame (x right, y down, face half-width ~1), and the exact landmark
points (LANDMARK_NAMES order) that the dataset stores. The action units are FACS-like
intensities in [0, 1] (ACTION_UNITS order); see `grefel_jax.data.synthetic_faces` for how a
class becomes an AU vector.
"""

from __future__ import annotations

import functools

import numpy as np

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
AU_INDEX = {name.split("_")[0]: i for i, name in enumerate(ACTION_UNITS)}
NUM_ACTION_UNITS = len(ACTION_UNITS)

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


def _mirror_name(name: str) -> str:
    """The point a horizontal flip turns `name` into: r <-> l, jaw_i <-> jaw_(8-i)."""
    if name.startswith("jaw_"):
        return f"jaw_{8 - int(name[4:])}"
    swap = {"r": "l", "l": "r"}
    return "_".join(swap.get(part, part) for part in name.split("_"))


# Horizontal flip: point k of the flipped face is the mirror image of point
# LANDMARK_FLIP_PERMUTATION[k] of the original (left/right pairs swap, midline points stay).
LANDMARK_FLIP_PERMUTATION = tuple(LANDMARK_NAMES.index(_mirror_name(n)) for n in LANDMARK_NAMES)
# The eye centres that normalise the NME (inter-pupil distance).
EYE_CENTRE_POINTS = ((LANDMARK_NAMES.index("pupil_r"),), (LANDMARK_NAMES.index("pupil_l"),))

_SKIN_LIGHT = np.array([246, 214, 188], np.float32)
_SKIN_DARK = np.array([92, 60, 42], np.float32)
_HAIR = np.array(
    [[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 160, 95], [150, 60, 30], [150, 150, 150]],
    np.float32,
)
_IRIS = np.array([[60, 40, 25], [40, 80, 140], [70, 110, 70], [25, 20, 20]], np.float32)


def _bezier_weights(n: int) -> np.ndarray:
    """(n, 3) Bernstein weights of a quadratic curve at n evenly spaced t."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return np.concatenate([(1 - t) ** 2, 2 * (1 - t) * t, t**2], axis=1)


def bezier(a, m, b, n: int = 8) -> np.ndarray:
    """Quadratic curve from a to b passing through m at t=0.5; (n, 2) points."""
    a, m, b = np.asarray(a, np.float32), np.asarray(m, np.float32), np.asarray(b, np.float32)
    control = 2.0 * m - 0.5 * (a + b)
    return _bezier_weights(n) @ np.stack([a, control, b])


def thick_curve(points: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Polygon (2n, 2) of a polyline `points (n, 2)` with half-widths `widths (n,)` (brows)."""
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


def ellipse(center, rx, ry, n: int = 24) -> np.ndarray:
    """(n, 2) float32 points of the axis-aligned ellipse at `center (2,)` with radii rx, ry."""
    return _unit_circle(n) * np.array([rx, ry], np.float32) + np.asarray(center, np.float32)


def poly(points: np.ndarray) -> list[tuple[float, float]]:
    """`points (n, 2)` as the list of (x, y) tuples that PIL's ImageDraw takes."""
    return [tuple(p) for p in points.tolist()]


def color(rgb) -> tuple[int, int, int]:
    """A float RGB triple `(3,)`, clipped to [0, 255], as PIL's integer colour tuple."""
    c = np.clip(np.asarray(rgb), 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2])


class Identity:
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
        self.lipcolor = self.skin * lip_tint + np.array([25, 0, 5])


def face_geometry(ident: Identity, aus: np.ndarray) -> dict[str, np.ndarray]:
    """All drawn shapes and landmarks in the canonical frame for identity + AUs.

    Args:
      ident: the face's Identity.
      aus: (NUM_ACTION_UNITS,) float32 AU intensities, ACTION_UNITS order.

    Returns:
      dict of shapes in canonical units: polygons `(n, 2)` (`face`, `mouth_outer`, `mouth_inner`),
      lists of them (`eyes`, `lids`, `brows`), `pupils`, `nose`, scalars (`mouth_open`,
      `nose_wrinkle`, `teeth`),
      `landmarks (NUM_LANDMARKS, 2)` float32 and `au` (AU name -> float).
    """
    au = {k: float(aus[i]) for k, i in AU_INDEX.items()}
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
        up_curve = bezier(inner, top, outer, 9)
        low_curve = bezier(outer, bottom, inner, 9)
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
        brows.append(bezier(inner, mid, outer, 9))
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
            bezier(corners[0], [0, upper_top], corners[1], 10),
            bezier(corners[1], [0, lower_bottom], corners[0], 10)[1:-1],
        ]
    )
    g["mouth_inner"] = np.concatenate(
        [
            bezier(corners[0], [0, upper_inner], corners[1], 10),
            bezier(corners[1], [0, lower_inner], corners[0], 10)[1:-1],
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
