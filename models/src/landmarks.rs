//! face-api's FaceLandmark68Net (`faceLandmarkNet/` + `faceFeatureExtractor/`): four dense
//! blocks of separable convs, a 7x7 average pool and a fully connected layer regressing 68
//! points, with face-api's crop, padding correction and shift back to image pixels.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::batch::{self, CpuBatch};
use crate::detection::FaceBox;
use crate::error::{ModelError, Result};
use crate::layers::{Activation, Conv, Padding, SeparableConv};
use crate::preprocess::{to_square_batch_tensor, FloatImage};
use crate::tfjs::WeightMap;

/// Mean RGB subtracted before scaling by 1/255 (`FaceFeatureExtractor.forwardInput`).
const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
/// Number of landmarks.
const POINTS: usize = 68;

/// 68 facial landmarks (iBUG 300-W order) in image pixel coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Landmarks68 {
    /// `[x, y]` per landmark.
    pub points: Vec<[f32; 2]>,
}

impl Landmarks68 {
    /// Centroid of points `36..42`, face-api's `getLeftEye` (the eye on the image's left).
    pub fn left_eye_center(&self) -> [f32; 2] {
        self.centroid(36..42)
    }

    /// Centroid of points `42..48`, face-api's `getRightEye`.
    pub fn right_eye_center(&self) -> [f32; 2] {
        self.centroid(42..48)
    }

    /// Point 30, the tip of the nose.
    pub fn nose_tip(&self) -> [f32; 2] {
        self.points[30]
    }

    /// Centroid of points `48..68`, face-api's `getMouth`.
    pub fn mouth_center(&self) -> [f32; 2] {
        self.centroid(48..68)
    }

    /// Mean of a range of points, summed in `f64` as face-api's `getCenterPoint`.
    fn centroid(&self, range: std::ops::Range<usize>) -> [f32; 2] {
        let n = range.len() as f64;
        let (sx, sy) = self.points[range].iter().fold((0.0, 0.0), |(sx, sy), p| {
            (sx + f64::from(p[0]), sy + f64::from(p[1]))
        });
        [(sx / n) as f32, (sy / n) as f32]
    }
}

/// The first conv of a dense block: a plain conv in `dense0`, separable elsewhere.
#[derive(Debug, Clone)]
enum FirstConv {
    Plain(Conv),
    Separable(SeparableConv),
}

/// face-api's `denseBlock4`: a stride-2 conv, then three separable convs each fed the ReLU
/// of the sum of all previous outputs. Run as running sums `s2 = out1 + out2`,
/// `s3 = s2 + out3`, `relu(s3 + out4)`: each conv adds its input as a fused residual and reads
/// it through a fused ReLU, so the block runs no separate element-wise op.
#[derive(Debug, Clone)]
struct DenseBlock {
    conv0: FirstConv,
    convs: [SeparableConv; 3],
}

impl DenseBlock {
    fn load(w: &WeightMap, prefix: &str, cin: usize, cout: usize, first: bool) -> Result<Self> {
        let conv0 = if first {
            FirstConv::Plain(
                Conv::load(
                    w,
                    &format!("{prefix}/conv0/filters"),
                    Some(&format!("{prefix}/conv0/bias")),
                    (3, cin, cout),
                    2,
                    Padding::Same,
                )?
                .with_activation(Activation::Relu),
            )
        } else {
            FirstConv::Separable(
                SeparableConv::load(w, &format!("{prefix}/conv0"), cin, cout, 2)?
                    .with_activation(Activation::Relu),
            )
        };
        let sep = |i: usize| SeparableConv::load(w, &format!("{prefix}/conv{i}"), cout, cout, 1);
        Ok(Self {
            conv0,
            convs: [
                sep(1)?,
                sep(2)?.with_input_relu(),
                sep(3)?.with_input_relu().with_activation(Activation::Relu),
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out1 = match &self.conv0 {
            FirstConv::Plain(c) => c.run(x)?,
            FirstConv::Separable(c) => c.run(x)?,
        };
        let s2 = self.convs[0].run_add(&out1, &out1)?;
        let s3 = self.convs[1].run_add(&s2, &s2)?;
        self.convs[2].run_add(&s3, &s3)
    }
}

/// The FaceLandmark68Net network.
#[derive(Debug, Clone)]
pub struct FaceLandmark68Net {
    dense: [DenseBlock; 4],
    fc_weight: Tensor,
    fc_bias: Tensor,
    mean: Tensor,
}

impl FaceLandmark68Net {
    /// Weight file name (without `-weights_manifest.json`).
    pub const MODEL: &'static str = "face_landmark_68_model";
    /// Side of the square network input.
    pub const INPUT_SIZE: usize = 112;

    /// Maps the TF.js tensors `dense0`..`dense3`, `fc` onto the network.
    pub fn load(weights: &WeightMap) -> Result<Self> {
        let fc_weight = weights.get("fc/weights", &[256, 2 * POINTS])?;
        let device = fc_weight.device().clone();
        Ok(Self {
            dense: [
                DenseBlock::load(weights, "dense0", 3, 32, true)?,
                DenseBlock::load(weights, "dense1", 32, 64, false)?,
                DenseBlock::load(weights, "dense2", 64, 128, false)?,
                DenseBlock::load(weights, "dense3", 128, 256, false)?,
            ],
            fc_weight,
            fc_bias: weights.vector("fc/bias", 2 * POINTS)?,
            mean: Tensor::new(&MEAN_RGB, &device)?.reshape((1, 3, 1, 1))?,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.mean.device()
    }

    /// x: `[n, 3, 112, 112]` raw pixels 0..255 → `[n, 136]` interleaved `x, y` relative to the
    /// input, as face-api's `forwardInput` returns for a 112x112 input (no padding correction).
    /// On the CPU each image runs through the whole network on its own, the images in parallel.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        batch::run(x, CpuBatch::ImageByImage, |x| {
            let mut out = (x.broadcast_sub(&self.mean)? / 255.0)?;
            for block in &self.dense {
                out = block.forward(&out)?;
            }
            let features = out.avg_pool2d_with_stride(7, 2)?.flatten_from(1)?;
            Ok(features
                .matmul(&self.fc_weight)?
                .broadcast_add(&self.fc_bias)?)
        })
    }

    /// For each (image, detection box): face-api's crop ([`FaceBox::clip_floor`]), centred
    /// `padToSquare` and resize to 112, ONE batched forward over all faces, then the points
    /// mapped back as face-api does: padding-corrected, scaled to the crop and shifted by the
    /// unfloored box corner.
    pub fn detect(&self, faces: &[(&FloatImage, FaceBox)]) -> Result<Vec<Landmarks68>> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let size = Self::INPUT_SIZE;
        let crops = faces
            .iter()
            .enumerate()
            .map(|(i, (img, bbox))| {
                let (x, y, w, h) = bbox.clip_floor(img.width, img.height).ok_or_else(|| {
                    ModelError::InvalidInput(format!("face box {i} lies outside its image"))
                })?;
                Ok((img.crop(x, y, w, h), w, h))
            })
            .collect::<Result<Vec<_>>>()?;
        let batch: Vec<&FloatImage> = crops.iter().map(|(crop, _, _)| crop).collect();
        let out: Vec<f32> = self
            .forward(&to_square_batch_tensor(&batch, true, size, self.device())?)?
            .flatten_all()?
            .to_vec1()?;
        Ok(crops
            .iter()
            .zip(faces)
            .zip(out.chunks_exact(2 * POINTS))
            .map(|(((_, w, h), (_, bbox)), v)| postprocess(v, *w, *h, bbox))
            .collect())
    }
}

/// `FaceLandmark68NetBase.postProcess` (in `f32`, as the tensor ops), then `FaceLandmarks`'
/// scale to the `w x h` crop and `shiftBy(box.x, box.y)` (in `f64`, as JS numbers).
fn postprocess(v: &[f32], w: usize, h: usize, bbox: &FaceBox) -> Landmarks68 {
    let size = FaceLandmark68Net::INPUT_SIZE as f64;
    let (wf, hf) = (w as f64, h as f64);
    let scale = size / wf.max(hf);
    let (sw, sh) = (wf * scale, hf * scale);
    let pad_x = if sw < sh { (sw - sh).abs() / 2.0 } else { 0.0 };
    let pad_y = if sh < sw { (sw - sh).abs() / 2.0 } else { 0.0 };
    let relative =
        |value: f32, pad: f64, dim: f64| f64::from((value * size as f32 - pad as f32) / dim as f32);
    let points = v
        .chunks_exact(2)
        .map(|p| {
            [
                (relative(p[0], pad_x, sw) * wf + f64::from(bbox.x)) as f32,
                (relative(p[1], pad_y, sh) * hf + f64::from(bbox.y)) as f32,
            ]
        })
        .collect();
    Landmarks68 { points }
}
