//! Face alignment and quality: face-api's descriptor crop, dlib's 150×150 aligned face chip,
//! and a size/sharpness quality gate for enrolment and recognition.
//!
//! Landmarks are the 68 iBUG points (face-api's `FaceLandmarks68` order), in image pixels.

use crate::detection::FaceBox;
use crate::preprocess::FloatImage;

/// Side of dlib's face chip (what `dlib_face_recognition_resnet_model_v1` is trained on).
pub const CHIP_SIZE: usize = 150;
/// Padding of dlib's face chip, as a fraction of the template face (`get_face_chip_details(shape, 150, 0.25)`).
pub const CHIP_PADDING: f64 = 0.25;

/// dlib's mean face: average positions of landmarks 17..=67 in a unit square, copied verbatim
/// from `get_face_chip_details` in dlib's `dlib/image_transforms/interpolation.h`
/// (github.com/davisking/dlib).
const MEAN_FACE_SHAPE_X: [f64; 51] = [
    0.000213256,
    0.0752622,
    0.18113,
    0.29077,
    0.393397,
    0.586856,
    0.689483,
    0.799124,
    0.904991,
    0.98004,
    0.490127,
    0.490127,
    0.490127,
    0.490127,
    0.36688,
    0.426036,
    0.490127,
    0.554217,
    0.613373,
    0.121737,
    0.187122,
    0.265825,
    0.334606,
    0.260918,
    0.182743,
    0.645647,
    0.714428,
    0.793132,
    0.858516,
    0.79751,
    0.719335,
    0.254149,
    0.340985,
    0.428858,
    0.490127,
    0.551395,
    0.639268,
    0.726104,
    0.642159,
    0.556721,
    0.490127,
    0.423532,
    0.338094,
    0.290379,
    0.428096,
    0.490127,
    0.552157,
    0.689874,
    0.553364,
    0.490127,
    0.42689,
];
/// See [`MEAN_FACE_SHAPE_X`].
const MEAN_FACE_SHAPE_Y: [f64; 51] = [
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915,
    0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345,
    0.587326, 0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852,
    0.178758, 0.216423, 0.244077, 0.245099, 0.780233, 0.745405, 0.727388, 0.742578, 0.727388,
    0.745405, 0.780233, 0.864805, 0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746,
    0.785343, 0.778746, 0.784792, 0.824182, 0.831803, 0.824182,
];

/// Landmarks dlib fits the chip to: 17..=67 without the eyebrows (17..=26) and the lower lip
/// (55..=59, 65..=67), exactly as `get_face_chip_details` skips them.
fn used_for_alignment(i: usize) -> bool {
    (27..=67).contains(&i) && !(55..=59).contains(&i) && !(65..=67).contains(&i)
}

/// Where dlib's template puts landmark `i` (17..=67) in a `CHIP_SIZE` chip with `CHIP_PADDING`.
pub fn template_point(i: usize) -> [f64; 2] {
    let scale = CHIP_SIZE as f64 / (2.0 * CHIP_PADDING + 1.0);
    [
        (CHIP_PADDING + MEAN_FACE_SHAPE_X[i - 17]) * scale,
        (CHIP_PADDING + MEAN_FACE_SHAPE_Y[i - 17]) * scale,
    ]
}

/// Template centres of the left (36..=41) and right (42..=47) eye, in chip pixels.
pub fn template_eye_centres() -> [[f64; 2]; 2] {
    let centre = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let s = r.fold([0.0, 0.0], |a, i| {
            let p = template_point(i);
            [a[0] + p[0], a[1] + p[1]]
        });
        [s[0] / n, s[1] / n]
    };
    [centre(36..42), centre(42..48)]
}

/// A 2-D similarity transform `p ↦ [[a, -b], [b, a]] p + t` (rotation, uniform scale, shift).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `scale * cos(angle)`.
    pub a: f64,
    /// `scale * sin(angle)`.
    pub b: f64,
    /// Translation.
    pub t: [f64; 2],
}

impl Similarity {
    /// Least-squares fit mapping `from[i]` onto `to[i]` (dlib's `find_similarity_transform`,
    /// Umeyama's method, in its closed 2-D form). Needs at least two distinct points.
    pub fn fit(from: &[[f64; 2]], to: &[[f64; 2]]) -> Self {
        let n = from.len().min(to.len()).max(1) as f64;
        let mean = |pts: &[[f64; 2]]| {
            let s = pts
                .iter()
                .fold([0.0, 0.0], |a, p| [a[0] + p[0], a[1] + p[1]]);
            [s[0] / n, s[1] / n]
        };
        let (mf, mt) = (mean(from), mean(to));
        let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
        for (p, q) in from.iter().zip(to) {
            let (px, py) = (p[0] - mf[0], p[1] - mf[1]);
            let (qx, qy) = (q[0] - mt[0], q[1] - mt[1]);
            dot += px * qx + py * qy;
            cross += px * qy - py * qx;
            norm += px * px + py * py;
        }
        let (a, b) = if norm > 0.0 {
            (dot / norm, cross / norm)
        } else {
            (1.0, 0.0)
        };
        let t = [
            mt[0] - (a * mf[0] - b * mf[1]),
            mt[1] - (b * mf[0] + a * mf[1]),
        ];
        Self { a, b, t }
    }

    /// Applies the transform to `p`.
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        [
            self.a * p[0] - self.b * p[1] + self.t[0],
            self.b * p[0] + self.a * p[1] + self.t[1],
        ]
    }

    /// Uniform scale factor.
    pub fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }

    /// Rotation angle in radians.
    pub fn angle(&self) -> f64 {
        self.b.atan2(self.a)
    }
}

/// dlib's chip geometry (`chip_details` + `extract_image_chip`): chip pixel `(col, row)` samples
/// image point `centre + R(angle) · step · ((col, row) − (size − 1)/2)`, where the fitted
/// similarity maps the chip's centre `(size/2, size/2)` to `centre`, and `step = (size·scale − 1)
/// / (size − 1)` because dlib spans the chip's corner pixels over `centered_drect(size·scale)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipTransform {
    /// Image point the chip is centred on.
    pub centre: [f64; 2],
    /// Rotation of the face in the image (radians).
    pub angle: f64,
    /// Image pixels per template pixel (the similarity's scale).
    pub scale: f64,
    /// Image pixels between neighbouring chip pixels.
    pub step: f64,
}

impl ChipTransform {
    /// dlib's `get_face_chip_details(landmarks, CHIP_SIZE, CHIP_PADDING)`.
    ///
    /// # Panics
    /// If `landmarks` holds fewer than 68 points.
    pub fn from_landmarks(landmarks: &[[f32; 2]]) -> Self {
        assert!(landmarks.len() >= 68, "dlib alignment needs 68 landmarks");
        let (from, to): (Vec<[f64; 2]>, Vec<[f64; 2]>) = (17..68)
            .filter(|&i| used_for_alignment(i))
            .map(|i| {
                let p = landmarks[i];
                (template_point(i), [f64::from(p[0]), f64::from(p[1])])
            })
            .unzip();
        let tform = Similarity::fit(&from, &to);
        let size = CHIP_SIZE as f64;
        let scale = tform.scale();
        Self {
            centre: tform.apply([size / 2.0, size / 2.0]),
            angle: tform.angle(),
            scale,
            step: (size * scale - 1.0) / (size - 1.0),
        }
    }

    /// Image point sampled by chip pixel `(col, row)`.
    pub fn to_image(&self, col: f64, row: f64) -> [f64; 2] {
        self.grid().at(col, row)
    }

    /// The same mapping with its rotation worked out once, for sampling every chip pixel.
    fn grid(&self) -> ChipGrid {
        let (sin, cos) = self.angle.sin_cos();
        ChipGrid {
            centre: self.centre,
            step: self.step,
            sin,
            cos,
        }
    }

    /// Chip coordinates of image point `p` (inverse of [`ChipTransform::to_image`]).
    pub fn to_chip(&self, p: [f64; 2]) -> [f64; 2] {
        let half = (CHIP_SIZE as f64 - 1.0) / 2.0;
        let (dx, dy) = (p[0] - self.centre[0], p[1] - self.centre[1]);
        let (s, c) = self.angle.sin_cos();
        [
            half + (c * dx + s * dy) / self.step,
            half + (-s * dx + c * dy) / self.step,
        ]
    }

    /// Number of `pyramid_down<2>` levels dlib goes down before sampling: how many times
    /// the chip's source rectangle (`drectangle`, width `r - l + 1`), halved by `rect_down`,
    /// still has more pixels than the chip.
    fn pyramid_depth(&self) -> u32 {
        let size = CHIP_SIZE as f64;
        let mut width = size * self.scale;
        let mut depth = 0;
        while depth < 16 {
            width = (width - 1.0) / 2.0 + 1.0;
            if width * width <= size * size {
                break;
            }
            depth += 1;
        }
        depth
    }
}

/// [`ChipTransform::to_image`] with the rotation's sine and cosine at hand.
struct ChipGrid {
    centre: [f64; 2],
    step: f64,
    sin: f64,
    cos: f64,
}

impl ChipGrid {
    /// `extract_image_chips`' source rectangle in an image `size` pixels wide and high: the
    /// rotated chip rectangle, grown by 2, 6, 14, ... pixels with the pyramid `depth`, clipped
    /// to the image and rounded to whole pixels, as `((x0, width), (y0, height))`.
    fn source_rect(&self, depth: u32, size: (usize, usize)) -> ((usize, usize), (usize, usize)) {
        let last = (CHIP_SIZE - 1) as f64;
        let corners =
            [(0.0, 0.0), (last, 0.0), (0.0, last), (last, last)].map(|(c, r)| self.at(c, r));
        let grow = (0..depth).fold(2.0, |g, _| g * 2.0 + 2.0);
        let extent = |k: usize, lim: usize| {
            let lo = corners.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min) - grow;
            let hi = corners
                .iter()
                .map(|p| p[k])
                .fold(f64::NEG_INFINITY, f64::max)
                + grow;
            let (lo, hi) = (lo.max(0.0).round(), hi.min(lim as f64 - 1.0).round());
            (lo as usize, (hi - lo + 1.0).max(0.0) as usize)
        };
        (extent(0, size.0), extent(1, size.1))
    }

    /// Image point sampled by chip pixel `(col, row)`.
    fn at(&self, col: f64, row: f64) -> [f64; 2] {
        let half = (CHIP_SIZE as f64 - 1.0) / 2.0;
        let (dx, dy) = ((col - half) * self.step, (row - half) * self.step);
        let (s, c) = (self.sin, self.cos);
        [
            self.centre[0] + c * dx - s * dy,
            self.centre[1] + s * dx + c * dy,
        ]
    }
}

/// dlib's `pyramid_down<2>::point_down`, applied `depth` times.
fn point_down(mut p: [f64; 2], depth: u32) -> [f64; 2] {
    for _ in 0..depth {
        p = [p[0] / 2.0 - 1.25, p[1] / 2.0 - 0.75];
    }
    p
}

/// The 150×150 face chip dlib's `get_face_chip_details(shape, 150, 0.25)` +
/// `extract_image_chip` produce: a similarity fit of landmarks 27..=67 (dlib skips eyebrows and
/// lower lip) to dlib's mean face, rotation corrected, bilinear sampling, zero outside the
/// image, each value truncated to an integer as dlib's `rgb_pixel` chip stores it.
///
/// Where the face is more than twice the chip's resolution, dlib first crops the chip's
/// (grown) bounding box and walks down a `pyramid_down<2>` image pyramid (separable 5-tap
/// `[1 4 6 4 1]` filter, every other pixel, integer pixels) with its `point_down` geometry;
/// this reproduces it step by step.
///
/// # Panics
/// If `landmarks` holds fewer than 68 points.
pub fn dlib_chip(image: &FloatImage, landmarks: &[[f32; 2]]) -> FloatImage {
    let tform = ChipTransform::from_landmarks(landmarks);
    let grid = tform.grid();
    let depth = tform.pyramid_depth();
    let mut chip = FloatImage::zeros(CHIP_SIZE, CHIP_SIZE);
    let ((x0, w), (y0, h)) = grid.source_rect(depth, (image.width, image.height));
    if w == 0 || h == 0 {
        return chip;
    }
    // The rectangle is read in place; only the pyramid's levels are new images.
    let rect = Window::of(image, (x0, y0), (w, h));
    let mut levels: Option<FloatImage> = None;
    for _ in 0..depth {
        levels = Some(pyramid_down(levels.as_ref().map_or(rect, Window::whole)));
    }
    let level = levels.as_ref().map_or(rect, Window::whole);
    for (row, pixels) in chip.data.chunks_exact_mut(CHIP_SIZE * 3).enumerate() {
        for (col, pixel) in pixels.chunks_exact_mut(3).enumerate() {
            let p = grid.at(col as f64, row as f64);
            let q = point_down([p[0] - x0 as f64, p[1] - y0 as f64], depth);
            if let Some(rgb) = level.bilinear(q[0], q[1]) {
                pixel.copy_from_slice(&rgb);
            }
        }
    }
    // `rgb_pixel` truncates each value: one pass (a cast, which vectorises; `trunc` does not
    // on baseline x86-64) over samples that lie in 0..=255.
    for v in &mut chip.data {
        *v = *v as i32 as f32;
    }
    chip
}

/// A rectangle of an image's samples read in place: `width × height` pixels whose rows start
/// `stride` samples apart.
#[derive(Debug, Clone, Copy)]
struct Window<'a> {
    data: &'a [f32],
    stride: usize,
    width: usize,
    height: usize,
}

impl<'a> Window<'a> {
    /// The `w × h` pixels of `image` from `(x0, y0)`, which must lie inside it.
    fn of(image: &'a FloatImage, (x0, y0): (usize, usize), (w, h): (usize, usize)) -> Self {
        Self {
            data: &image.data[(y0 * image.width + x0) * 3..],
            stride: image.width * 3,
            width: w,
            height: h,
        }
    }

    /// All of `image`.
    fn whole(image: &'a FloatImage) -> Self {
        Self::of(image, (0, 0), (image.width, image.height))
    }

    /// Row `y`'s samples.
    fn row(&self, y: usize) -> &'a [f32] {
        &self.data[y * self.stride..y * self.stride + self.width * 3]
    }

    /// dlib's `interpolate_bilinear`: `None` unless all four neighbours are inside.
    fn bilinear(&self, x: f64, y: f64) -> Option<[f32; 3]> {
        // `floor(x) + 1 < width` is `x < width - 1` for whole widths (and NaN fails every test).
        let inside =
            x >= 0.0 && y >= 0.0 && x < self.width as f64 - 1.0 && y < self.height as f64 - 1.0;
        if !inside {
            return None;
        }
        let (l, t) = (x as usize, y as usize);
        let (fx, fy) = (x - l as f64, y - t as f64);
        let top = &self.row(t)[3 * l..3 * l + 6];
        let bottom = &self.row(t + 1)[3 * l..3 * l + 6];
        let mut rgb = [0.0; 3];
        for (c, v) in rgb.iter_mut().enumerate() {
            let (tl, tr) = (f64::from(top[c]), f64::from(top[c + 3]));
            let (bl, br) = (f64::from(bottom[c]), f64::from(bottom[c + 3]));
            *v = ((1.0 - fy) * ((1.0 - fx) * tl + fx * tr) + fy * ((1.0 - fx) * bl + fx * br))
                as f32;
        }
        Some(rgb)
    }
}

/// dlib's `pyramid_down<2>` on an RGB image of integer values: rows filtered with
/// `[1 4 6 4 1]` at every other column, then columns likewise at every other row, the sum
/// divided by 256 and truncated. `(h - 3) / 2` × `(w - 3) / 2` pixels; empty when either side
/// is at most 8. Every sum is a whole number below 2²⁴, so `f32` holds it exactly in any order.
fn pyramid_down(img: Window) -> FloatImage {
    if img.width <= 8 || img.height <= 8 {
        return FloatImage::zeros(0, 0);
    }
    let (w, h) = ((img.width - 3) / 2, (img.height - 3) / 2);
    let mut rows = vec![0.0f32; img.height * w * 3];
    for (y, out) in rows.chunks_exact_mut(w * 3).enumerate() {
        let src = img.row(y);
        for (x, px) in out.chunks_exact_mut(3).enumerate() {
            let taps = &src[6 * x..6 * x + 15];
            for (c, v) in px.iter_mut().enumerate() {
                *v = taps[c]
                    + 4.0 * taps[c + 3]
                    + 6.0 * taps[c + 6]
                    + 4.0 * taps[c + 9]
                    + taps[c + 12];
            }
        }
    }
    let mut out = FloatImage::zeros(w, h);
    let filtered = |y: usize| &rows[y * w * 3..(y + 1) * w * 3];
    for (y, dst) in out.data.chunks_exact_mut(w * 3).enumerate() {
        let r = [0, 1, 2, 3, 4].map(|k| filtered(2 * y + k));
        for (i, v) in dst.iter_mut().enumerate() {
            let sum = r[0][i] + 4.0 * r[1][i] + 6.0 * r[2][i] + 4.0 * r[3][i] + r[4][i];
            // A floor of a sum that is never negative.
            *v = (sum / 256.0) as u32 as f32;
        }
    }
    out
}

/// The integer crop face-api takes for a box (`clipAtImageBorders` + floor, then slice);
/// `None` when the box lies outside the image.
pub fn face_api_crop(image: &FloatImage, bbox: &FaceBox) -> Option<FloatImage> {
    let (x, y, w, h) = bbox.clip_floor(image.width, image.height)?;
    Some(image.crop(x, y, w, h))
}

/// The box face-api's `landmarks.align(null, { useDlibAlignment: true })` gives, clipped at
/// the image borders and floored as `extractFaceTensors` slices it: side
/// `floor(mean eye-to-mouth distance / 0.45)`, placed so the centre of the eye and mouth
/// centres lands at `(0.5, 0.43)` of it.
///
/// face-api also caps the side at `landmarkCropWidth + x` (sic); that cap cannot bind because
/// the side is well below the landmark crop's width, so it is left out. The result may have
/// zero size when the box falls outside the image (`face_api_crop` then returns `None`).
///
/// # Panics
/// If `landmarks` holds fewer than 68 points.
pub fn face_api_descriptor_box(landmarks: &[[f32; 2]], img_w: usize, img_h: usize) -> FaceBox {
    assert!(
        landmarks.len() >= 68,
        "face-api alignment needs 68 landmarks"
    );
    let centre = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let s = landmarks[r].iter().fold([0.0, 0.0], |a, p| {
            [a[0] + f64::from(p[0]), a[1] + f64::from(p[1])]
        });
        [s[0] / n, s[1] / n]
    };
    let (left_eye, right_eye, mouth) = (centre(36..42), centre(42..48), centre(48..68));
    let to_mouth = |p: [f64; 2]| (mouth[0] - p[0]).hypot(mouth[1] - p[1]);
    let eye_to_mouth = (to_mouth(left_eye) + to_mouth(right_eye)) / 2.0;
    let size = (eye_to_mouth / 0.45).floor();
    let ref_x = (left_eye[0] + right_eye[0] + mouth[0]) / 3.0;
    let ref_y = (left_eye[1] + right_eye[1] + mouth[1]) / 3.0;
    let x = (ref_x - 0.5 * size).max(0.0).floor();
    let y = (ref_y - 0.43 * size).max(0.0).floor();
    // clipAtImageBorders (x, y are already >= 0), then floor.
    let width = size.min(img_w as f64 - x).floor().max(0.0);
    let height = size.min(img_h as f64 - y).floor().max(0.0);
    FaceBox {
        x: x as f32,
        y: y as f32,
        width: width as f32,
        height: height as f32,
    }
}

// Quality thresholds, measured on the real photos (face-api demo sample1..6: 22 faces;
// face_recognition test_images: 6 faces) with face-api's landmarks:
// - inter-ocular distance of the real faces: 50.2..118.1 px;
// - sharpness of the real faces: 37.4 (a soft video still, sample4) .. 1214 (obama);
// - the same faces Gaussian-blurred with sigma 3 (original pixels): 2.0..18.9 (demo),
//   10.3..28.3 (test_images; their faces are larger, so the blur is smaller in chip pixels);
//   sigma 2: 4.3..68.2, sigma 1.5: 7.2..120;
// - sample1 face 0 downscaled to 16 px inter-ocular: sharpness 40, flagged by size alone.

/// Inter-ocular distance below which a face is too small to recognise reliably (pixels in the
/// original image, between the eye centres); real faces measured 50..118 px.
pub const MIN_INTEROCULAR_PX: f32 = 20.0;
/// Inter-ocular distance from which size no longer lowers the quality score.
pub const GOOD_INTEROCULAR_PX: f32 = 40.0;
/// [`sharpness`] below which a chip is too blurry: between the blurriest real face (37.4) and
/// the sharpest sigma-3 blurred one (28.3).
pub const MIN_SHARPNESS: f32 = 30.0;
/// Sharpness from which blur no longer lowers the quality score.
pub const GOOD_SHARPNESS: f32 = 100.0;

/// Quality of one aligned face.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quality {
    /// `0..=1`: the product of a size term and a sharpness term, each saturating at its
    /// "good" level and reaching 0 at zero size / zero sharpness.
    pub score: f32,
    /// Inter-ocular distance in original image pixels.
    pub face_px: f32,
    /// Variance of the 4-neighbour Laplacian of the chip's grey values over the template face
    /// area (chip pixels 25..125 in both axes).
    pub sharpness: f32,
    /// Large enough ([`MIN_INTEROCULAR_PX`]) and sharp enough ([`MIN_SHARPNESS`]).
    pub acceptable: bool,
}

/// Inter-ocular distance (between the centres of points 36..=41 and 42..=47).
///
/// # Panics
/// If `landmarks` holds fewer than 48 points.
pub fn interocular_px(landmarks: &[[f32; 2]]) -> f32 {
    let centre = |r: std::ops::Range<usize>| {
        let n = r.len() as f32;
        let s = landmarks[r]
            .iter()
            .fold([0.0f32, 0.0], |a, p| [a[0] + p[0], a[1] + p[1]]);
        [s[0] / n, s[1] / n]
    };
    let (l, r) = (centre(36..42), centre(42..48));
    (r[0] - l[0]).hypot(r[1] - l[1])
}

/// Variance of the 4-neighbour Laplacian of the grey values (`0.299 R + 0.587 G + 0.114 B`) of
/// `chip` over its template face area (the chip minus its `CHIP_PADDING` margin), skipping
/// pixels for which `inside(col, row)` is false for the pixel or a neighbour (chip pixels
/// sampled outside the photo are zero-filled, and that artificial edge is not sharpness).
pub fn sharpness(chip: &FloatImage, inside: impl Fn(usize, usize) -> bool) -> f32 {
    let margin = |n: usize| (n as f64 * CHIP_PADDING / (1.0 + 2.0 * CHIP_PADDING)).round() as usize;
    let (mx, my) = (margin(chip.width).max(1), margin(chip.height).max(1));
    // Each pixel's grey value is read five times below: worked out once.
    let greys: Vec<f64> = chip
        .data
        .chunks_exact(3)
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect();
    let grey = |x: usize, y: usize| greys[y * chip.width + x];
    let (mut sum, mut sum2, mut n) = (0.0, 0.0, 0.0);
    for y in my..chip.height.saturating_sub(my) {
        for x in mx..chip.width.saturating_sub(mx) {
            let all_inside = [(x, y), (x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]
                .iter()
                .all(|&(cx, cy)| inside(cx, cy));
            if !all_inside {
                continue;
            }
            let lap = grey(x - 1, y) + grey(x + 1, y) + grey(x, y - 1) + grey(x, y + 1)
                - 4.0 * grey(x, y);
            sum += lap;
            sum2 += lap * lap;
            n += 1.0;
        }
    }
    if n == 0.0 {
        return 0.0;
    }
    let mean = sum / n;
    (sum2 / n - mean * mean).max(0.0) as f32
}

/// Size and blur check of a face: `image` the original photo, `landmarks` its 68 points there,
/// `chip` its [`dlib_chip`].
///
/// # Panics
/// If `landmarks` holds fewer than 68 points.
pub fn assess(image: &FloatImage, landmarks: &[[f32; 2]], chip: &FloatImage) -> Quality {
    let face_px = interocular_px(landmarks);
    let grid = ChipTransform::from_landmarks(landmarks).grid();
    let (w, h) = (image.width as f64, image.height as f64);
    // Which chip pixels sample the photo, worked out once (`sharpness` asks five times each).
    let mut inside = Vec::with_capacity(chip.width * chip.height);
    for row in 0..chip.height {
        for col in 0..chip.width {
            let p = grid.at(col as f64, row as f64);
            inside.push(p[0] >= 0.0 && p[1] >= 0.0 && p[0] + 1.0 < w && p[1] + 1.0 < h);
        }
    }
    let sharpness = sharpness(chip, |col, row| inside[row * chip.width + col]);
    let size_term = (face_px / GOOD_INTEROCULAR_PX).clamp(0.0, 1.0);
    let sharp_term = (sharpness / GOOD_SHARPNESS).clamp(0.0, 1.0);
    Quality {
        score: size_term * sharp_term,
        face_px,
        sharpness,
        acceptable: face_px >= MIN_INTEROCULAR_PX && sharpness >= MIN_SHARPNESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 68 landmarks with 17..=67 on dlib's template (chip pixels), mapped by `f`.
    fn template_landmarks(f: impl Fn([f64; 2]) -> [f64; 2]) -> Vec<[f32; 2]> {
        (0..68)
            .map(|i| {
                let p = f(if i < 17 {
                    [75.0, 75.0]
                } else {
                    template_point(i)
                });
                [p[0] as f32, p[1] as f32]
            })
            .collect()
    }

    fn rotate_scale(p: [f64; 2], angle: f64, scale: f64, t: [f64; 2]) -> [f64; 2] {
        let (s, c) = angle.sin_cos();
        [
            scale * (c * p[0] - s * p[1]) + t[0],
            scale * (s * p[0] + c * p[1]) + t[1],
        ]
    }

    #[test]
    fn similarity_fit_of_template_onto_itself_is_identity() {
        let pts: Vec<[f64; 2]> = (17..68).map(template_point).collect();
        let s = Similarity::fit(&pts, &pts);
        assert!((s.a - 1.0).abs() < 1e-12 && s.b.abs() < 1e-12);
        assert!(s.t[0].abs() < 1e-9 && s.t[1].abs() < 1e-9);
        let t = ChipTransform::from_landmarks(&template_landmarks(|p| p));
        assert!((t.scale - 1.0).abs() < 1e-6 && t.angle.abs() < 1e-6);
        assert!((t.centre[0] - 75.0).abs() < 1e-4 && (t.centre[1] - 75.0).abs() < 1e-4);
        assert!((t.step - 1.0).abs() < 1e-6);
    }

    #[test]
    fn similarity_fit_recovers_rotation_scale_and_shift() {
        let (angle, scale, shift) = (0.3, 2.5, [40.0, -12.0]);
        let from: Vec<[f64; 2]> = (17..68).map(template_point).collect();
        let to: Vec<[f64; 2]> = from
            .iter()
            .map(|&p| rotate_scale(p, angle, scale, shift))
            .collect();
        let s = Similarity::fit(&from, &to);
        assert!((s.angle() - angle).abs() < 1e-9 && (s.scale() - scale).abs() < 1e-9);
        for (p, q) in from.iter().zip(&to) {
            let r = s.apply(*p);
            assert!((r[0] - q[0]).abs() < 1e-9 && (r[1] - q[1]).abs() < 1e-9);
        }
        // The chip undoes the rotation: every landmark comes back onto the template.
        let lm = template_landmarks(|p| rotate_scale(p, angle, scale, shift));
        let t = ChipTransform::from_landmarks(&lm);
        assert!((t.angle - angle).abs() < 1e-6 && (t.scale - scale).abs() < 1e-5);
        for (i, p) in lm.iter().enumerate().skip(27) {
            let c = t.to_chip([f64::from(p[0]), f64::from(p[1])]);
            let want = template_point(i);
            // dlib's chip pixel c shows template coordinate c + 0.5 (scaled by step/scale).
            let want = [
                74.5 + (want[0] - 75.0) * scale / t.step,
                74.5 + (want[1] - 75.0) * scale / t.step,
            ];
            assert!((c[0] - want[0]).abs() < 1e-3 && (c[1] - want[1]).abs() < 1e-3);
            let back = t.to_image(c[0], c[1]);
            assert!((back[0] - f64::from(p[0])).abs() < 1e-3);
        }
    }

    fn ramp(w: usize, h: usize) -> FloatImage {
        let mut img = FloatImage::zeros(w, h);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    img.data[(y * w + x) * 3 + c] = (x + 2 * y + c) as f32;
                }
            }
        }
        img
    }

    #[test]
    fn identity_chip_samples_half_a_pixel_in_and_zero_fills_outside() {
        let img = ramp(150, 150);
        let chip = dlib_chip(&img, &template_landmarks(|p| p));
        // Chip pixel (c, r) samples image point (c + 0.5, r + 0.5); the ramp is linear; dlib
        // truncates to an integer.
        assert_eq!(chip.at(10, 20, 1), (10.5f32 + 2.0 * 20.5 + 1.0).trunc());
        assert_eq!(chip.at(100, 3, 0), (100.5f32 + 2.0 * 3.5).trunc());
        // The last column/row would need pixel 150: outside, zero-filled as dlib does.
        assert_eq!(chip.at(149, 10, 0), 0.0);
        assert_eq!(chip.at(10, 149, 2), 0.0);
    }

    #[test]
    fn large_faces_go_down_the_pyramid_and_keep_their_content() {
        // Face 3.6x the chip's resolution: one 2x level, then bilinear at 1.8x. The symmetric
        // [1 4 6 4 1] filter keeps a linear ramp; dlib's point_down offsets (1.25, 0.75) sample
        // the level at image point (x - 0.5, y + 0.5), i.e. ramp + 0.5; truncation loses < 1.
        let (scale, shift) = (3.6, [20.0, 30.0]);
        let lm = template_landmarks(|p| rotate_scale(p, 0.0, scale, shift));
        let t = ChipTransform::from_landmarks(&lm);
        assert_eq!(t.pyramid_depth(), 1);
        let img = ramp(700, 700);
        let chip = dlib_chip(&img, &lm);
        for (c, r) in [(30, 40), (75, 75), (120, 110)] {
            let p = t.to_image(c as f64, r as f64);
            let want = (p[0] + 2.0 * p[1] + 0.5) as f32;
            assert!(
                (chip.at(c, r, 0) - want).abs() <= 1.0,
                "{} vs {want}",
                chip.at(c, r, 0)
            );
        }
    }

    /// dlib's sampling written out plainly, pixel by pixel: the grown rectangle copied, each
    /// pyramid level summed tap by tap, each chip pixel mapped and interpolated on its own.
    fn plain_chip(image: &FloatImage, landmarks: &[[f32; 2]]) -> FloatImage {
        let t = ChipTransform::from_landmarks(landmarks);
        let depth = t.pyramid_depth();
        let ((x0, w), (y0, h)) = t.grid().source_rect(depth, (image.width, image.height));
        let mut chip = FloatImage::zeros(CHIP_SIZE, CHIP_SIZE);
        if w == 0 || h == 0 {
            return chip;
        }
        let taps = [1.0f32, 4.0, 6.0, 4.0, 1.0];
        let mut level = image.crop(x0, y0, w, h);
        for _ in 0..depth {
            if level.width <= 8 || level.height <= 8 {
                level = FloatImage::zeros(0, 0);
                break;
            }
            let (lw, lh) = ((level.width - 3) / 2, (level.height - 3) / 2);
            let mut down = FloatImage::zeros(lw, lh);
            for (y, x, c) in
                (0..lh).flat_map(|y| (0..lw).flat_map(move |x| (0..3).map(move |c| (y, x, c))))
            {
                let mut sum = 0.0;
                for (ky, ty) in taps.iter().enumerate() {
                    for (kx, tx) in taps.iter().enumerate() {
                        sum += ty * tx * level.at(2 * x + kx, 2 * y + ky, c);
                    }
                }
                down.data[(y * lw + x) * 3 + c] = (sum / 256.0).floor();
            }
            level = down;
        }
        for (row, col) in (0..CHIP_SIZE).flat_map(|r| (0..CHIP_SIZE).map(move |c| (r, c))) {
            let p = t.to_image(col as f64, row as f64);
            let q = point_down([p[0] - x0 as f64, p[1] - y0 as f64], depth);
            let (left, top) = (q[0].floor(), q[1].floor());
            if left < 0.0
                || top < 0.0
                || left + 1.0 >= level.width as f64
                || top + 1.0 >= level.height as f64
            {
                continue;
            }
            let (l, tp, fx, fy) = (left as usize, top as usize, q[0] - left, q[1] - top);
            for c in 0..3 {
                let v = |x, y| f64::from(level.at(x, y, c));
                let top_row = (1.0 - fx) * v(l, tp) + fx * v(l + 1, tp);
                let bottom_row = (1.0 - fx) * v(l, tp + 1) + fx * v(l + 1, tp + 1);
                let value = ((1.0 - fy) * top_row + fy * bottom_row) as f32;
                chip.data[(row * CHIP_SIZE + col) * 3 + c] = value.trunc();
            }
        }
        chip
    }

    /// The chip read in place, its pyramid filtered row by row, equals the plain sampling
    /// exactly: rotated and straight faces, small and up to 8× the chip (none to three pyramid levels),
    /// inside the photo and hanging over each of its borders.
    #[test]
    fn chip_equals_plain_sampling() {
        let (w, h) = (900, 700);
        let mut img = FloatImage::zeros(w, h);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = ((i * 2_654_435_761) >> 7 & 255) as f32;
        }
        let placements = [
            (0.0, 1.0, [300.0, 200.0]),
            (0.4, 0.7, [420.0, 310.0]),
            (-0.9, 2.2, [250.0, 120.0]),
            (2.5, 3.6, [700.0, 600.0]),
            (0.2, 8.0, [-300.0, -250.0]),
            (-0.3, 1.5, [820.0, 640.0]),
            (1.2, 6.0, [450.0, -100.0]),
        ];
        let mut depths = Vec::new();
        for (angle, scale, shift) in placements {
            let lm = template_landmarks(|p| rotate_scale(p, angle, scale, shift));
            depths.push(ChipTransform::from_landmarks(&lm).pyramid_depth());
            let (got, want) = (dlib_chip(&img, &lm), plain_chip(&img, &lm));
            let differ = got
                .data
                .iter()
                .zip(&want.data)
                .filter(|(g, w)| g != w)
                .count();
            assert_eq!(
                differ, 0,
                "angle {angle} scale {scale}: {differ} samples differ"
            );
            assert!(
                got.data.iter().any(|&v| v > 0.0),
                "angle {angle} scale {scale}: empty"
            );
        }
        assert!(
            depths.contains(&0) && depths.contains(&1) && depths.contains(&2),
            "{depths:?}"
        );
    }

    #[test]
    fn descriptor_box_follows_face_api_dlib_alignment() {
        // Eyes at (40, 50) and (80, 50), mouth at (60, 95): eye-to-mouth sqrt(20² + 45²).
        let mut lm = vec![[0.0f32; 2]; 68];
        lm[36..42].fill([40.0, 50.0]);
        lm[42..48].fill([80.0, 50.0]);
        lm[48..68].fill([60.0, 95.0]);
        let size = (20.0f64.hypot(45.0) / 0.45).floor();
        let b = face_api_descriptor_box(&lm, 500, 500);
        let (rx, ry) = (60.0, 65.0);
        assert_eq!(b.width as f64, size);
        assert_eq!(b.x as f64, (rx - 0.5 * size).floor());
        assert_eq!(b.y as f64, (ry - 0.43 * size).floor());
        // Clipped at the image border.
        let c = face_api_descriptor_box(&lm, 100, 80);
        assert_eq!(c.width as f64, 100.0 - b.x as f64);
        assert_eq!(c.height as f64, 80.0 - b.y as f64);
    }

    #[test]
    fn sharpness_ignores_out_of_image_pixels_and_flat_chips_score_zero() {
        let flat = FloatImage {
            width: 150,
            height: 150,
            data: vec![128.0; 150 * 150 * 3],
        };
        assert_eq!(sharpness(&flat, |_, _| true), 0.0);
        let mut half = flat.clone();
        for y in 0..150 {
            for x in 80..150 {
                half.data[(y * 150 + x) * 3..(y * 150 + x) * 3 + 3].fill(0.0);
            }
        }
        assert!(sharpness(&half, |_, _| true) > 0.0);
        assert_eq!(sharpness(&half, |x, _| x < 80), 0.0);
    }
}
