r"""How well `predict --align` aligns rendered faces with a pretrained landmark network.

  python benchmarks/align_landmarks.py --landmarks runs/landmarks [--faces 200 --size 96] \
      [--classifier runs/demo]

Renders `--faces` synthetic faces (seeds `(777, i)`, never a dataset seed), rotates each by a
further 0 and 20 degrees about the image centre (cv2), predicts the points on the whole image
(the `--no-detect` path), and reports per rotation: how many point sets pass
`align.implausibility`, where the *true* eye centres land with the similarity fitted on the
predicted points against the one fitted on the true points (pixels of a `--size` crop; mean
and 95th percentile), and the mean |roll| of the true eye line before and after the warp.
With `--classifier` (a model trained on synthetic_faces), also its primary and corrected
accuracy on the same faces with the square crop (`--no-detect`: the whole image) and aligned.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from grefel_jax.data import synthetic_faces
from grefel_jax.inference import align
from grefel_jax.inference.landmark_points import LandmarkModel


def _roll(eyes: np.ndarray) -> float:
    v = eyes[1] - eyes[0]
    return abs(float(np.degrees(np.arctan2(v[1], v[0]))))


def render(faces: int, size: int, extra: float):
    """`faces` rendered faces rotated by `extra` degrees: images, true points, labels."""
    images, truths, labels = [], [], []
    centre = ((size - 1) / 2, (size - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, extra, 1.0)
    for i in range(faces):
        sample = synthetic_faces.render_face((777, i), synthetic_faces.label_for_index(i), size)
        images.append(
            cv2.warpAffine(sample["image"], matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)
        )
        truths.append(align.apply_affine(matrix, sample["landmarks"]))
        labels.append(synthetic_faces.label_for_index(i))
    return images, truths, np.array(labels)


def accuracies(predictor, images, labels) -> tuple[float, float, int]:
    """(primary accuracy, corrected accuracy, faces aligned) of one Predictor."""
    results = predictor.predict(images)
    primary = np.array([r.faces[0].class_index for r in results])
    corrected = np.array([r.faces[0].corrected_index for r in results])
    n_aligned = sum(bool(r.faces[0].aligned) for r in results)
    return float(np.mean(primary == labels)), float(np.mean(corrected == labels)), n_aligned


def measure(landmarks: LandmarkModel, images, truths) -> dict:
    """The alignment numbers of the module doc for one set of rendered faces."""
    layout = landmarks.layout
    size = images[0].shape[0]
    faces = len(images)
    predicted = landmarks.predict_points(images)
    target = align.template_pixels(align.SYNTHETIC_FACES, size)
    plausible, errors, before, after = 0, [], [], []
    for points, truth in zip(predicted, truths):
        five, true_five = layout.five_points(points), layout.five_points(truth)
        box = (0, 0, size, size)
        plausible += align.implausibility(five, align.SYNTHETIC_FACES, box) is None
        fitted = align.apply_affine(align.similarity_from_points(five, target), true_five[:2])
        ideal = align.apply_affine(align.similarity_from_points(true_five, target), true_five[:2])
        errors.append(float(np.linalg.norm(fitted - ideal, axis=1).mean()))
        before.append(_roll(true_five[:2]))
        after.append(_roll(fitted))
    return {
        "plausible": plausible,
        "faces": faces,
        "eye_error_mean_px": float(np.mean(errors)),
        "eye_error_p95_px": float(np.percentile(errors, 95)),
        "roll_before_deg": float(np.mean(before)),
        "roll_after_deg": float(np.mean(after)),
        "roll_after_max_deg": float(np.max(after)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landmarks", required=True, help="Landmark pretraining workdir.")
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--size", type=int, default=96, help="Render and crop side.")
    parser.add_argument("--classifier", help="Also measure this synthetic_faces model.")
    args = parser.parse_args()
    landmarks = LandmarkModel.from_checkpoint(args.landmarks, batch_size=50)
    predictors = {}
    if args.classifier:
        import warnings

        from grefel_jax.inference import Predictor

        warnings.simplefilter("ignore")  # fallbacks are counted, not printed
        common = {"detect": False, "batch_size": 64}
        predictors["square"] = Predictor.from_checkpoint(args.classifier, **common)
        predictors["aligned"] = Predictor.from_checkpoint(
            args.classifier, align=True, landmarks=landmarks, **common
        )
    for extra in (0.0, 20.0):
        images, truths, labels = render(args.faces, args.size, extra)
        r = measure(landmarks, images, truths)
        print(
            f"extra rotation {extra:.0f} deg: {r['plausible']}/{r['faces']} plausible; eye error "
            f"mean {r['eye_error_mean_px']:.2f} px, 95th pct {r['eye_error_p95_px']:.2f} px; "
            f"|roll| {r['roll_before_deg']:.1f} -> {r['roll_after_deg']:.1f} deg "
            f"(max {r['roll_after_max_deg']:.1f})"
        )
        for name, predictor in predictors.items():
            primary, corrected, n_aligned = accuracies(predictor, images, labels)
            print(
                f"  {name}: accuracy primary {primary:.4f}, corrected {corrected:.4f} "
                f"({n_aligned}/{len(images)} aligned)"
            )


if __name__ == "__main__":
    main()
