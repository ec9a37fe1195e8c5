"""Times the face_recognition library on every image of a folder tree, the way `rollcall eval`
processes it: decode, detect (HOG, one upsample: the library's default), landmarks and a 128-D
encoding per face. Prints one JSON object: images, faces, seconds, images_per_s."""
import json
import pathlib
import sys
import time

import face_recognition

paths = sorted(
    p for p in pathlib.Path(sys.argv[1]).rglob("*")
    if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
)
# Load the models before the clock starts, as rollcall loads its weights before timing.
face_recognition.face_encodings(face_recognition.load_image_file(str(paths[0])))
faces = 0
start = time.perf_counter()
for p in paths:
    image = face_recognition.load_image_file(str(p))
    boxes = face_recognition.face_locations(image, model="hog")
    faces += len(face_recognition.face_encodings(image, known_face_locations=boxes))
seconds = time.perf_counter() - start
print(json.dumps({"images": len(paths), "faces": faces, "seconds": seconds,
                  "images_per_s": len(paths) / seconds}))
