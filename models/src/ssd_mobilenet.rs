//! face-api's SSD MobileNetV1 face detector (`ssdMobilenetv1`): a MobileNetV1 backbone with
//! batch-normalised depthwise-separable convolutions and ReLU6, six SSD box predictors and an
//! output layer that decodes box encodings against the 5118 anchors stored in the weights
//! (`Output/extra_dim`), followed by face-api's greedy NMS and mapping back to image pixels.

use candle_core::{Device, Tensor, D};

use crate::batch::{self, CpuBatch};
use crate::detection::{non_max_suppression, Detection, FaceBox};
use crate::error::Result;
use crate::layers::{Activation, Conv, Padding, SeparableConv};
use crate::preprocess::{to_square_batch_tensor, FloatImage};
use crate::tfjs::WeightMap;

/// Variance epsilon of face-api's `tf.batchNorm` calls.
const BN_EPSILON: f64 = 0.0010000000474974513;
/// Number of anchors (and of decoded boxes per image).
const NUM_ANCHORS: usize = 5118;
/// IoU above which face-api's NMS suppresses a box.
const NMS_IOU: f32 = 0.5;

/// face-api's `pointwiseConvLayer`: a `same` conv plus `convolution_bn_offset`, then ReLU6
/// (`clipByValue(x, 0, 6)`).
/// Used for the backbone's first 3x3 conv, its pointwise convs and the extra SSD feature layers.
#[derive(Debug, Clone)]
pub struct PointwiseConvLayer {
    conv: Conv,
}

impl PointwiseConvLayer {
    /// Loads `<prefix>/Conv2d_<idx>_pointwise/{weights,convolution_bn_offset}`.
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        idx: usize,
        (k, cin, cout): (usize, usize, usize),
        stride: usize,
    ) -> Result<Self> {
        let base = format!("{prefix}/Conv2d_{idx}_pointwise");
        let conv = Conv::load(
            w,
            &format!("{base}/weights"),
            Some(&format!("{base}/convolution_bn_offset")),
            (k, cin, cout),
            stride,
            Padding::Same,
        )?
        .with_activation(Activation::Relu6);
        Ok(Self { conv })
    }

    /// Applies the layer to an NCHW tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.run(x)
    }
}

/// face-api's `depthwiseConvLayer`: a 3x3 depthwise `same` conv, batch norm (folded into the
/// filter and a bias at load time), then ReLU6. Loads
/// `MobilenetV1/Conv2d_<idx>_depthwise/{depthwise_weights,BatchNorm/*}`.
fn load_depthwise_layer(w: &WeightMap, idx: usize, channels: usize, stride: usize) -> Result<Conv> {
    let base = format!("MobilenetV1/Conv2d_{idx}_depthwise");
    let conv = Conv::load_depthwise(w, &format!("{base}/depthwise_weights"), 3, channels, stride)?;
    let bn = |name: &str| w.vector(&format!("{base}/BatchNorm/{name}"), channels);
    let (gamma, beta) = (bn("gamma")?, bn("beta")?);
    let (mean, variance) = (bn("moving_mean")?, bn("moving_variance")?);
    // (x - mean) * gamma / sqrt(var + eps) + beta  ==  x * scale + (beta - mean * scale).
    let scale = (gamma / (variance + BN_EPSILON)?.sqrt()?)?;
    let bias = (beta - (mean * &scale)?)?;
    Ok(conv
        .fold_affine(&scale, &bias)?
        .with_activation(Activation::Relu6))
}

/// One depthwise-separable block of MobileNetV1 (block `idx`, 1..=13, with `cin` → `cout`
/// channels and the depthwise `stride`): the depthwise layer, then the pointwise layer.
fn load_conv_pair(
    w: &WeightMap,
    idx: usize,
    (cin, cout): (usize, usize),
    stride: usize,
) -> Result<SeparableConv> {
    Ok(SeparableConv::new(
        load_depthwise_layer(w, idx, cin, stride)?,
        PointwiseConvLayer::load(w, "MobilenetV1", idx, (1, cin, cout), 1)?.conv,
    ))
}

/// face-api's `mobileNetV1` backbone.
#[derive(Debug, Clone)]
pub struct MobileNetV1 {
    conv_0: PointwiseConvLayer,
    pairs: Vec<SeparableConv>,
}

impl MobileNetV1 {
    /// `(cin, cout)` of blocks 1..=13.
    const CHANNELS: [(usize, usize); 13] = [
        (32, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 1024),
        (1024, 1024),
    ];

    /// Loads the backbone's `MobilenetV1/*` tensors.
    pub fn load(w: &WeightMap) -> Result<Self> {
        let conv_0 = PointwiseConvLayer::load(w, "MobilenetV1", 0, (3, 3, 32), 2)?;
        let pairs = Self::CHANNELS
            .iter()
            .enumerate()
            .map(|(i, &channels)| {
                let idx = i + 1;
                let stride = if [2, 4, 6, 12].contains(&idx) { 2 } else { 1 };
                load_conv_pair(w, idx, channels, stride)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { conv_0, pairs })
    }

    /// Returns `(out, conv11)`: the final 1024-channel features and block 11's output.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut out = self.conv_0.forward(x)?;
        for pair in &self.pairs[..11] {
            out = pair.run(&out)?;
        }
        let conv11 = out.clone();
        for pair in &self.pairs[11..] {
            out = pair.run(&out)?;
        }
        Ok((out, conv11))
    }
}

/// One SSD box predictor: 1x1 convs for box encodings (4 per anchor) and class logits
/// (3 per anchor: background, face, unused).
#[derive(Debug, Clone)]
pub struct BoxPredictor {
    box_encoding: Conv,
    class: Conv,
}

impl BoxPredictor {
    /// Loads `Prediction/BoxPredictor_<idx>/*` for `anchors` anchors per cell on `cin` channels.
    pub fn load(w: &WeightMap, idx: usize, cin: usize, anchors: usize) -> Result<Self> {
        let conv = |kind: &str, cout: usize| {
            let base = format!("Prediction/BoxPredictor_{idx}/{kind}");
            Conv::load(
                w,
                &format!("{base}/weights"),
                Some(&format!("{base}/biases")),
                (1, cin, cout),
                1,
                Padding::Same,
            )
        };
        Ok(Self {
            box_encoding: conv("BoxEncodingPredictor", anchors * 4)?,
            class: conv("ClassPredictor", anchors * 3)?,
        })
    }

    /// Returns `(box encodings [n, cells * anchors, 4], class logits [n, cells * anchors, 3])`
    /// in TF's NHWC order of anchors.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = x.dim(0)?;
        let nhwc = |t: Tensor, last: usize| -> Result<Tensor> {
            Ok(t.permute((0, 2, 3, 1))?.reshape((n, (), last))?)
        };
        Ok((
            nhwc(self.box_encoding.run(x)?, 4)?,
            nhwc(self.class.run(x)?, 3)?,
        ))
    }
}

/// face-api's `predictionLayer`: four extra stride-2 feature stages and the six box predictors.
#[derive(Debug, Clone)]
pub struct PredictionLayer {
    convs: Vec<PointwiseConvLayer>,
    predictors: Vec<BoxPredictor>,
}

impl PredictionLayer {
    /// `(kernel, cin, cout, stride)` of `Prediction/Conv2d_0..7_pointwise`.
    const CONVS: [(usize, usize, usize, usize); 8] = [
        (1, 1024, 256, 1),
        (3, 256, 512, 2),
        (1, 512, 128, 1),
        (3, 128, 256, 2),
        (1, 256, 128, 1),
        (3, 128, 256, 2),
        (1, 256, 64, 1),
        (3, 64, 128, 2),
    ];
    /// `(cin, anchors per cell)` of `Prediction/BoxPredictor_0..5`.
    const PREDICTORS: [(usize, usize); 6] =
        [(512, 3), (1024, 6), (512, 6), (256, 6), (256, 6), (128, 6)];

    /// Loads the `Prediction/*` tensors.
    pub fn load(w: &WeightMap) -> Result<Self> {
        let convs = Self::CONVS
            .iter()
            .enumerate()
            .map(|(i, &(k, cin, cout, stride))| {
                PointwiseConvLayer::load(w, "Prediction", i, (k, cin, cout), stride)
            })
            .collect::<Result<Vec<_>>>()?;
        let predictors = Self::PREDICTORS
            .iter()
            .enumerate()
            .map(|(i, &(cin, anchors))| BoxPredictor::load(w, i, cin, anchors))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { convs, predictors })
    }

    /// Returns `(box encodings [n, 5118, 4], class logits [n, 5118, 3])` from the backbone's
    /// final features `x` and block 11's output.
    pub fn forward(&self, x: &Tensor, conv11: &Tensor) -> Result<(Tensor, Tensor)> {
        // Feature maps seen by the predictors: conv11, x, then the outputs of conv 1, 3, 5, 7.
        let mut features = vec![conv11.clone(), x.clone()];
        let mut out = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            out = conv.forward(&out)?;
            if i % 2 == 1 {
                features.push(out.clone());
            }
        }
        let mut boxes = Vec::with_capacity(features.len());
        let mut classes = Vec::with_capacity(features.len());
        for (predictor, feature) in self.predictors.iter().zip(&features) {
            let (b, c) = predictor.forward(feature)?;
            boxes.push(b);
            classes.push(c);
        }
        Ok((Tensor::cat(&boxes, 1)?, Tensor::cat(&classes, 1)?))
    }
}

/// face-api's `outputLayer`: decodes box encodings against the anchors and turns the face
/// logits into sigmoid scores.
#[derive(Debug, Clone)]
pub struct OutputLayer {
    /// Anchor heights and widths, `[1, 5118, 2]`.
    sizes: Tensor,
    /// Anchor centres (y, x), `[1, 5118, 2]`.
    centers: Tensor,
}

impl OutputLayer {
    /// Loads the anchors `Output/extra_dim` (`[1, 5118, 4]` as `[ymin, xmin, ymax, xmax]`).
    pub fn load(w: &WeightMap) -> Result<Self> {
        let anchors = w.get("Output/extra_dim", &[1, NUM_ANCHORS, 4])?;
        let min = anchors.narrow(2, 0, 2)?;
        let sizes = (anchors.narrow(2, 2, 2)? - &min)?;
        let centers = (min + (&sizes / 2.0)?)?;
        Ok(Self { sizes, centers })
    }

    /// Returns `(boxes [n, 5118, 4] as relative [top, left, bottom, right], scores [n, 5118])`.
    pub fn forward(
        &self,
        box_encodings: &Tensor,
        class_logits: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let offsets = box_encodings.narrow(2, 0, 2)?;
        let log_scales = box_encodings.narrow(2, 2, 2)?;
        let half = ((log_scales / 5.0)?.exp()?.broadcast_mul(&self.sizes)? / 2.0)?;
        let center = (offsets / 10.0)?
            .broadcast_mul(&self.sizes)?
            .broadcast_add(&self.centers)?;
        let boxes = Tensor::cat(&[(&center - &half)?, (&center + &half)?], D::Minus1)?;
        let scores = candle_nn::ops::sigmoid(&class_logits.narrow(2, 1, 1)?.squeeze(2)?)?;
        Ok((boxes, scores))
    }
}

/// face-api's SSD MobileNetV1 face detector.
#[derive(Debug, Clone)]
pub struct SsdMobilenetV1 {
    mobilenet: MobileNetV1,
    prediction: PredictionLayer,
    output: OutputLayer,
    device: Device,
}

impl SsdMobilenetV1 {
    /// TF.js model name under model/.
    pub const MODEL: &'static str = "ssd_mobilenetv1_model";
    /// Square input side.
    pub const INPUT_SIZE: usize = 512;

    /// Builds the detector from its weights (`ssd_mobilenetv1_model`).
    pub fn load(weights: &WeightMap) -> Result<Self> {
        let output = OutputLayer::load(weights)?;
        Ok(Self {
            mobilenet: MobileNetV1::load(weights)?,
            prediction: PredictionLayer::load(weights)?,
            device: output.sizes.device().clone(),
            output,
        })
    }

    /// x: [n, 3, 512, 512] raw pixel values 0..255 (the net normalises x/127.5 - 1 itself).
    /// Returns (boxes [n, 5118, 4] as relative [top, left, bottom, right], scores [n, 5118]) like face-api's outputLayer.
    /// On the CPU each image runs through the whole network on its own, the images in parallel.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        batch::run(x, CpuBatch::ImageByImage, |x| {
            let x = ((x / 127.5)? - 1.0)?;
            let (out, conv11) = self.mobilenet.forward(&x)?;
            let (boxes, classes) = self.prediction.forward(&out, &conv11)?;
            self.output.forward(&boxes, &classes)
        })
    }

    /// face-api's locateFaces for a batch: each image padToSquare(centered = false) + resize_bilinear to 512,
    /// ONE batched forward, then per image NMS (iou 0.5, min_confidence, max_results) and boxes mapped back to
    /// original image pixels exactly as SsdMobilenetv1.locateFaces does.
    pub fn detect(
        &self,
        images: &[&FloatImage],
        min_confidence: f32,
        max_results: usize,
    ) -> Result<Vec<Vec<Detection>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let size = Self::INPUT_SIZE;
        let inputs = to_square_batch_tensor(images, false, size, &self.device)?;
        let (boxes, scores) = self.forward(&inputs)?;
        let boxes: Vec<Vec<Vec<f32>>> = boxes.to_vec3()?;
        let scores: Vec<Vec<f32>> = scores.to_vec2()?;
        Ok(images
            .iter()
            .zip(boxes.iter().zip(&scores))
            .map(|(img, (boxes, scores))| locate(img, boxes, scores, min_confidence, max_results))
            .collect())
    }
}

/// NMS over one image's raw relative boxes, then face-api's mapping to image pixels: boxes are
/// clipped to `[0, 1]`, scaled by `512 / reshaped size` (undoing the bottom/right padding) and
/// by the image size.
fn locate(
    img: &FloatImage,
    boxes: &[Vec<f32>],
    scores: &[f32],
    min_confidence: f32,
    max_results: usize,
) -> Vec<Detection> {
    let candidates: Vec<Detection> = boxes
        .iter()
        .zip(scores)
        .map(|(b, &score)| Detection {
            bbox: FaceBox {
                x: b[1],
                y: b[0],
                width: b[3] - b[1],
                height: b[2] - b[0],
            },
            score,
        })
        .collect();
    let kept = non_max_suppression(&candidates, NMS_IOU, min_confidence, max_results);
    let (w, h) = (img.width as f64, img.height as f64);
    // face-api's computeReshapedDimensions: the image's size once its longer side is 512.
    let input = SsdMobilenetV1::INPUT_SIZE as f64;
    let scale = input / w.max(h);
    let pad_x = input / (w * scale).round();
    let pad_y = input / (h * scale).round();
    kept.into_iter()
        .map(|d| {
            let b = d.bbox;
            let top = f64::from(b.y).max(0.0) * pad_y;
            let bottom = f64::from(b.bottom()).min(1.0) * pad_y;
            let left = f64::from(b.x).max(0.0) * pad_x;
            let right = f64::from(b.right()).min(1.0) * pad_x;
            Detection {
                bbox: FaceBox {
                    x: (left * w) as f32,
                    y: (top * h) as f32,
                    width: ((right - left) * w) as f32,
                    height: ((bottom - top) * h) as f32,
                },
                score: d.score,
            }
        })
        .collect()
}
