//! face-api's `FaceRecognitionNet`: a dlib-style ResNet-34 variant (conv + per-channel scale
//! layers, residual blocks, four down-sampling residual blocks) mapping a 150×150 face to a
//! 128-d descriptor. Mirrors `src/faceRecognitionNet/*` of `@vladmandic/face-api@1.7.15`.

use candle_core::{Device, Tensor, D};

use crate::batch::{self, CpuBatch};
use crate::error::Result;
use crate::layers::{max_pool, Activation, Conv, Padding};
use crate::preprocess::{to_square_batch_tensor, FloatImage};
use crate::tfjs::WeightMap;

/// face-api's `normalize` mean, subtracted per RGB channel before dividing by 255.
const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];

/// `conv` → `+ bias` → scale layer (`* weights + biases`), then `activation`.
///
/// The scale layer is folded into the conv at load time:
/// `(conv(x, W) + b) * s + t = conv(x, W * s) + (b * s + t)` (exact up to float rounding).
fn conv_layer(
    w: &WeightMap,
    prefix: &str,
    (k, cin, cout): (usize, usize, usize),
    stride: usize,
    padding: Padding,
    activation: Activation,
) -> Result<Conv> {
    let conv = Conv::load(
        w,
        &format!("{prefix}/conv/filters"),
        Some(&format!("{prefix}/conv/bias")),
        (k, cin, cout),
        stride,
        padding,
    )?;
    let scale = w.vector(&format!("{prefix}/scale/weights"), cout)?;
    let shift = w.vector(&format!("{prefix}/scale/biases"), cout)?;
    Ok(conv
        .fold_affine(&scale, &shift)?
        .with_activation(activation))
}

/// face-api's `residual` (`conv` → `convNoRelu` → `+ x` → ReLU) and `residualDown`
/// (`convDown` (3×3, stride 2, valid) → `convNoRelu`, shortcut `avgPool(2, 2, valid)`).
#[derive(Debug, Clone)]
struct Residual {
    conv1: Conv,
    /// Ends with the block's ReLU (and adds the shortcut) unless the block down-samples.
    conv2: Conv,
    down: bool,
}

impl Residual {
    fn load(w: &WeightMap, prefix: &str, cin: usize, cout: usize, down: bool) -> Result<Self> {
        let (stride, padding) = if down {
            (2, Padding::Valid)
        } else {
            (1, Padding::Same)
        };
        Ok(Self {
            conv1: conv_layer(
                w,
                &format!("{prefix}/conv1"),
                (3, cin, cout),
                stride,
                padding,
                Activation::Relu,
            )?,
            conv2: conv_layer(
                w,
                &format!("{prefix}/conv2"),
                (3, cout, cout),
                1,
                Padding::Same,
                if down {
                    Activation::Identity
                } else {
                    Activation::Relu
                },
            )?,
            down,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.conv1.run(x)?;
        if !self.down {
            return self.conv2.run_add(&hidden, x);
        }
        let out = self.conv2.run(&hidden)?;
        // residualDown: the shortcut is a 2×2/2 valid average pool of the input. When the
        // strided valid conv came out one smaller (odd-to-even sizes), face-api appends a zero
        // row at the bottom and a zero column at the right of the conv branch; when channels
        // double, it appends as many zero channels to the shortcut.
        let mut pooled = x.avg_pool2d_with_stride(2, 2)?;
        let (_, c_out, h_out, w_out) = out.dims4()?;
        let (_, c_in, h_pool, w_pool) = pooled.dims4()?;
        let mut out = out;
        if h_pool != h_out || w_pool != w_out {
            out = out
                .pad_with_zeros(2, 0, h_pool - h_out)?
                .pad_with_zeros(3, 0, w_pool - w_out)?;
        }
        if c_in != c_out {
            pooled = pooled.pad_with_zeros(1, 0, c_out - c_in)?;
        }
        Ok((pooled + out)?.relu()?)
    }
}

/// face-api's face recognition network (128-d descriptors, dlib's ResNet weights).
#[derive(Debug, Clone)]
pub struct FaceRecognitionNet {
    conv32_down: Conv,
    blocks: Vec<Residual>,
    fc: Tensor,
    mean: Tensor,
    device: Device,
}

impl FaceRecognitionNet {
    /// Model name of the TF.js weight files.
    pub const MODEL: &'static str = "face_recognition_model";
    /// Side of the square input the network takes.
    pub const INPUT_SIZE: usize = 150;
    /// Length of a descriptor.
    pub const DESCRIPTOR_LEN: usize = 128;

    /// Builds the network from the `face_recognition_model` weights.
    pub fn load(weights: &WeightMap) -> Result<Self> {
        let conv32_down = conv_layer(
            weights,
            "conv32_down",
            (7, 3, 32),
            2,
            Padding::Valid,
            Activation::Relu,
        )?;
        // (name, in channels, out channels, down-sampling)
        const BLOCKS: [(&str, usize, usize, bool); 14] = [
            ("conv32_1", 32, 32, false),
            ("conv32_2", 32, 32, false),
            ("conv32_3", 32, 32, false),
            ("conv64_down", 32, 64, true),
            ("conv64_1", 64, 64, false),
            ("conv64_2", 64, 64, false),
            ("conv64_3", 64, 64, false),
            ("conv128_down", 64, 128, true),
            ("conv128_1", 128, 128, false),
            ("conv128_2", 128, 128, false),
            ("conv256_down", 128, 256, true),
            ("conv256_1", 256, 256, false),
            ("conv256_2", 256, 256, false),
            ("conv256_down_out", 256, 256, true),
        ];
        let blocks = BLOCKS
            .iter()
            .map(|&(name, cin, cout, down)| Residual::load(weights, name, cin, cout, down))
            .collect::<Result<Vec<_>>>()?;
        let fc = weights.get("fc", &[256, Self::DESCRIPTOR_LEN])?;
        let device = fc.device().clone();
        let mean = Tensor::new(&MEAN_RGB, &device)?.reshape((1, 3, 1, 1))?;
        Ok(Self {
            conv32_down,
            blocks,
            fc,
            mean,
            device,
        })
    }

    /// `x`: `[n, 3, 150, 150]` raw pixels `0..=255` → `[n, 128]` raw (unnormalised)
    /// descriptors, as face-api's `computeFaceDescriptor` returns them.
    /// The batch runs whole, layer by layer (image by image measured slower: its convolutions
    /// multiply the whole batch at once).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        batch::run(x, CpuBatch::Whole, |x| {
            let x = (x.broadcast_sub(&self.mean)? / 255.0)?;
            let mut out = self.conv32_down.run(&x)?;
            out = max_pool(&out, 3, 2, Padding::Valid)?;
            for block in &self.blocks {
                out = block.forward(&out)?;
            }
            let global_avg = out.mean((2, 3))?;
            Ok(global_avg.matmul(&self.fc)?)
        })
    }

    /// Face images of any size → padded to square (centred, as face-api's
    /// `toBatchTensor(150, true)`), resized to 150×150 when needed, run as ONE batched
    /// forward; each descriptor is L2-normalised.
    pub fn embed(&self, faces: &[&FloatImage]) -> Result<Vec<Vec<f32>>> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let size = Self::INPUT_SIZE;
        let batch = to_square_batch_tensor(faces, true, size, &self.device)?;
        let raw = self.forward(&batch)?;
        let norm = raw.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let unit = raw.broadcast_div(&norm.maximum(1e-12)?)?;
        Ok(unit.to_vec2()?)
    }
}
