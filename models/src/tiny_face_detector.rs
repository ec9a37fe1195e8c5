//! face-api's TinyFaceDetector: a Tiny-YOLOv2 head on a small separable-conv backbone
//! (`tinyFaceDetector/` + `tinyYolov2/TinyYolov2Base.ts`), with its box decoding and NMS.

use candle_core::{Device, Tensor};

use crate::batch::{self, CpuBatch};
use crate::detection::{non_max_suppression, Detection, FaceBox};
use crate::error::{ModelError, Result};
use crate::layers::{max_pool, Activation, Conv, Padding, SeparableConv};
use crate::preprocess::{to_square_batch_tensor, FloatImage};
use crate::tfjs::WeightMap;

/// Mean RGB subtracted before scaling by 1/255 (`tinyFaceDetector/const.ts`).
const MEAN_RGB: [f32; 3] = [117.001, 114.697, 97.404];
/// Anchor box sizes in grid cells, `(width, height)`.
const ANCHORS: [(f64, f64); 5] = [
    (1.603231, 2.094468),
    (6.041143, 7.080126),
    (2.882459, 3.518061),
    (4.266906, 5.178857),
    (9.041765, 10.66308),
];
/// Values per anchor: `x, y, w, h, score`.
const BOX_ENCODING: usize = 5;
/// IoU above which NMS suppresses the weaker box.
const IOU_THRESHOLD: f32 = 0.4;

/// face-api's `leaky`: leaky ReLU with slope 0.1.
const LEAKY: Activation = Activation::Leaky(0.1);

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The TinyFaceDetector network (`withSeparableConvs`, first layer a plain conv).
#[derive(Debug, Clone)]
pub struct TinyFaceDetector {
    conv0: Conv,
    separable: Vec<SeparableConv>,
    conv8: Conv,
    device: Device,
}

impl TinyFaceDetector {
    /// Weight file name (without `-weights_manifest.json`).
    pub const MODEL: &'static str = "tiny_face_detector_model";

    /// Maps the TF.js tensors `conv0`..`conv5`, `conv8` onto the network.
    pub fn load(weights: &WeightMap) -> Result<Self> {
        // `(x - mean) / 255` folded into the first conv (`valid`, so exact).
        let shift = MEAN_RGB.map(|m| -m / 255.0);
        let conv0 = Conv::load_with_input_affine(
            weights,
            ("conv0/filters", "conv0/bias"),
            (3, 3, 16),
            (&[1.0 / 255.0; 3], &shift),
        )?
        .with_activation(LEAKY);
        let channels = [16, 32, 64, 128, 256, 512];
        let separable = channels
            .windows(2)
            .enumerate()
            .map(|(i, c)| {
                Ok(
                    SeparableConv::load(weights, &format!("conv{}", i + 1), c[0], c[1], 1)?
                        .with_activation(LEAKY),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let conv8 = Conv::load(
            weights,
            "conv8/filters",
            Some("conv8/bias"),
            (1, 512, ANCHORS.len() * BOX_ENCODING),
            1,
            Padding::Valid,
        )?;
        Ok(Self {
            device: weights.vector("conv0/bias", 16)?.device().clone(),
            conv0,
            separable,
            conv8,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// x: `[n, 3, s, s]` raw pixels 0..255 (s a multiple of 32). Returns the raw head output
    /// `[n, 25, s/32, s/32]`; channel `5 * anchor + k` holds `x, y, w, h, score` logits.
    /// On the CPU each image runs through the whole network on its own, the images in parallel.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        batch::run(x, CpuBatch::ImageByImage, |x| {
            let mut out = self.conv0.run_pooled(x, 2, 2, Padding::Same)?;
            let last = self.separable.len() - 1;
            for (i, conv) in self.separable.iter().enumerate() {
                // face-api pads by 1 and runs a `valid` conv: the same as TF `same` for 3x3,
                // stride 1.
                out = conv.run(&out)?;
                let stride = if i == last { 1 } else { 2 };
                out = max_pool(&out, 2, stride, Padding::Same)?;
            }
            self.conv8.run(&out)
        })
    }

    /// ONE batched forward at `input_size` over all images (each padded to a square at the
    /// bottom/right and resized, as face-api's `toBatchTensor(inputSize, false)`), then box
    /// decoding, `score > score_threshold` and NMS (IoU 0.4) per image; boxes in original pixels.
    pub fn detect(
        &self,
        images: &[&FloatImage],
        input_size: usize,
        score_threshold: f32,
    ) -> Result<Vec<Vec<Detection>>> {
        if input_size == 0 || !input_size.is_multiple_of(32) {
            return Err(ModelError::InvalidInput(format!(
                "TinyFaceDetector input size {input_size} is not a positive multiple of 32"
            )));
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let batch = to_square_batch_tensor(images, false, input_size, self.device())?;
        let out = self.forward(&batch)?;
        let cells = out.dim(2)?;
        // NHWC, so that one cell's anchors are contiguous, as face-api reads them.
        let values: Vec<f32> = out.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1()?;
        let per_image = cells * cells * ANCHORS.len() * BOX_ENCODING;
        Ok(images
            .iter()
            .zip(values.chunks_exact(per_image))
            .map(|(img, v)| decode(v, cells, img, input_size, score_threshold))
            .collect())
    }
}

/// `TinyYolov2Base.extractBoxes` + NMS + `ObjectDetection`'s rescale to image pixels, for one
/// image's NHWC head output `v`. Arithmetic in `f64`, as face-api's JS numbers.
fn decode(
    v: &[f32],
    cells: usize,
    img: &FloatImage,
    input_size: usize,
    score_threshold: f32,
) -> Vec<Detection> {
    let (w, h) = (img.width as f64, img.height as f64);
    let size = input_size as f64;
    // computeReshapedDimensions: the image's size inside the padded input, rounded.
    let scale = size / w.max(h);
    let (rw, rh) = ((w * scale).round(), (h * scale).round());
    let (fx, fy) = (size / rw, size / rh);
    let n = cells as f64;
    let mut candidates = Vec::new();
    for row in 0..cells {
        for col in 0..cells {
            for (anchor, &(aw, ah)) in ANCHORS.iter().enumerate() {
                let at = |k: usize| {
                    f64::from(v[((row * cells + col) * ANCHORS.len() + anchor) * BOX_ENCODING + k])
                };
                let score = sigmoid(at(4));
                if score <= f64::from(score_threshold) {
                    continue;
                }
                let cx = (col as f64 + sigmoid(at(0))) / n * fx;
                let cy = (row as f64 + sigmoid(at(1))) / n * fy;
                let bw = at(2).exp() * aw / n * fx;
                let bh = at(3).exp() * ah / n * fy;
                candidates.push(Detection {
                    bbox: FaceBox {
                        x: ((cx - bw / 2.0) * w) as f32,
                        y: ((cy - bh / 2.0) * h) as f32,
                        width: (bw * w) as f32,
                        height: (bh * h) as f32,
                    },
                    score: score as f32,
                });
            }
        }
    }
    // face-api pops the best of an ascending stable sort: among equal scores the later
    // candidate wins; reversing makes the (stable, descending) crate NMS do the same.
    candidates.reverse();
    non_max_suppression(&candidates, IOU_THRESHOLD, f32::NEG_INFINITY, usize::MAX)
}
