//! Building blocks shared by the networks: convolutions with TensorFlow's padding rules.
//! Tensors are NCHW; filters are converted from TF.js layout once, at load time.
//!
//! The portable convolution path (any device) is below: a dense conv as one matmul over the
//! stacked kernel taps, a depthwise conv as a sum of scaled taps.

use candle_core::{DType, Module, Tensor};

use crate::cpu_conv::{
    self, DenseConv, DepthwiseConv, MaxPool, Op, Packed, PaddingFn, PooledConv, Separable,
};
pub use crate::cpu_conv::{Activation, Precision};
use crate::error::{ModelError, Result};
use crate::tfjs::WeightMap;

/// TensorFlow's padding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Output size `ceil(in / stride)`; the extra pixel of an odd total goes bottom/right.
    Same,
    /// No padding.
    Valid,
}

/// Padding `(before, after)` that TF's `same` mode applies along one axis.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// Pads an NCHW tensor spatially as TF's `same` mode would for this kernel and stride.
pub fn pad_same(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (top, bottom) = same_padding(h, kernel, stride);
    let (left, right) = same_padding(w, kernel, stride);
    let x = if top + bottom > 0 {
        x.pad_with_zeros(2, top, bottom)?
    } else {
        x.clone()
    };
    Ok(if left + right > 0 {
        x.pad_with_zeros(3, left, right)?
    } else {
        x
    })
}

/// Zero padding `(top, bottom, left, right)` of a padding mode for an `h × w` input.
fn padding_of(padding: Padding) -> PaddingFn {
    match padding {
        Padding::Same => |h, w, k, s| {
            let (top, bottom) = same_padding(h, k, s);
            let (left, right) = same_padding(w, k, s);
            (top, bottom, left, right)
        },
        Padding::Valid => |_, _, _, _| (0, 0, 0, 0),
    }
}

/// How a convolution runs: the CPU kernels of [`crate::cpu_conv`] with weights packed at
/// load time, or Candle tensor ops on any other device (and on the CPU without its kernels,
/// [`cpu_conv::runs_on`]).
#[derive(Debug, Clone)]
enum ConvImpl {
    Dense(DenseConv),
    Depthwise(DepthwiseConv),
    Portable {
        /// Filter in `[out, in / groups, kh, kw]`.
        weight: Tensor,
        bias: Option<Tensor>,
        groups: usize,
    },
}

/// A 2-D convolution (dense or depthwise) with bias, TF padding semantics and a fused
/// activation. On the CPU it runs the packed kernels of [`crate::cpu_conv`]; on other devices
/// it runs as Candle matmuls.
#[derive(Debug, Clone)]
pub struct Conv {
    imp: ConvImpl,
    stride: usize,
    padding: Padding,
    activation: Activation,
    /// Whether the input goes through a ReLU first (fused into the depthwise kernel).
    input_relu: bool,
}

impl Conv {
    /// A dense conv whose filter is `name` (`[k, k, cin, cout]`) and bias `bias_name`.
    pub fn load(
        w: &WeightMap,
        name: &str,
        bias_name: Option<&str>,
        (k, cin, cout): (usize, usize, usize),
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        let weight = w.conv_filter(name, k, k, cin, cout)?;
        let bias = bias_name.map(|b| w.vector(b, cout)).transpose()?;
        Ok(Self::new(weight, bias, stride, 1, padding)?.with_precision(w.precision()))
    }

    /// A depthwise conv whose filter is `name` (`[k, k, channels, 1]`), without bias.
    pub fn load_depthwise(
        w: &WeightMap,
        name: &str,
        k: usize,
        channels: usize,
        stride: usize,
    ) -> Result<Self> {
        let weight = w.depthwise_filter(name, k, k, channels)?;
        Self::new(weight, None, stride, channels, Padding::Same)
    }

    /// A conv from a `[out, in / groups, k, k]` filter and an optional bias, packed for the
    /// CPU kernels when it lives on the CPU and is dense or depthwise.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        groups: usize,
        padding: Padding,
    ) -> Result<Self> {
        let (cout, cin_per_group, k, _) = weight.dims4()?;
        let imp = if !cpu_conv::runs_on(weight.device()) || (groups > 1 && cin_per_group != 1) {
            ConvImpl::Portable {
                weight,
                bias,
                groups,
            }
        } else {
            let packed = weight.flatten_all()?.to_vec1::<f32>()?;
            let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
            if groups > 1 {
                ConvImpl::Depthwise(DepthwiseConv::new(
                    packed,
                    bias,
                    (cout, k),
                    stride,
                    padding_of(padding),
                ))
            } else {
                ConvImpl::Dense(DenseConv::new(
                    packed,
                    bias,
                    (cout, cin_per_group, k),
                    stride,
                    padding_of(padding),
                ))
            }
        };
        Ok(Self {
            imp,
            stride,
            padding,
            activation: Activation::Identity,
            input_relu: false,
        })
    }

    /// The same conv followed by `activation`.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        if let Some(packed) = self.packed_mut() {
            packed.activation = activation;
        }
        self
    }

    /// The same conv with its matrix products in `precision` (dense convs on the CPU kernels;
    /// the others ignore it).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        if let ConvImpl::Dense(k) = &mut self.imp {
            k.set_precision(precision);
        }
        self
    }

    /// The same conv applied to `relu(x)`: fused into the depthwise kernel, which reads its
    /// input through the ReLU; a separate op elsewhere.
    pub fn with_input_relu(mut self) -> Self {
        self.input_relu = true;
        if let ConvImpl::Depthwise(k) = &mut self.imp {
            k.input_relu = true;
        }
        self
    }

    /// Folds a per-output-channel affine layer `y * scale + shift` (batch norm, a scale
    /// layer) into the filter and bias.
    pub fn fold_affine(mut self, scale: &Tensor, shift: &Tensor) -> Result<Self> {
        if let Some(packed) = self.packed_mut() {
            packed.fold_affine(&scale.to_vec1()?, &shift.to_vec1()?);
        } else if let ConvImpl::Portable { weight, bias, .. } = &mut self.imp {
            let cout = scale.dim(0)?;
            *weight = weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
            *bias = Some(match bias {
                Some(b) => b.mul(scale)?.add(shift)?,
                None => shift.clone(),
            });
        }
        Ok(self)
    }

    /// A dense `valid` conv (as [`Self::load`]) whose input is first mapped per channel to
    /// `x * scale + shift` (a network's normalisation), with the map folded into the filter and
    /// bias: `W' = W * scale`, `b' = b + Σ W * shift`. Exact only without padding, where no
    /// padded zero would see the shift.
    pub fn load_with_input_affine(
        w: &WeightMap,
        (name, bias_name): (&str, &str),
        (k, cin, cout): (usize, usize, usize),
        (scale, shift): (&[f32], &[f32]),
    ) -> Result<Self> {
        let weight = w.conv_filter(name, k, k, cin, cout)?;
        let bias = w.vector(bias_name, cout)?;
        let per_channel = |v: &[f32]| Tensor::new(v, weight.device())?.reshape((1, cin, 1, 1));
        let (scale, shift) = (per_channel(scale)?, per_channel(shift)?);
        let bias = (bias + weight.broadcast_mul(&shift)?.sum((1, 2, 3))?)?;
        let weight = weight.broadcast_mul(&scale)?;
        Ok(Self::new(weight, Some(bias), 1, 1, Padding::Valid)?.with_precision(w.precision()))
    }

    /// The CPU kernel's packed weights, if this conv runs on the CPU kernels.
    fn packed_mut(&mut self) -> Option<&mut Packed> {
        match &mut self.imp {
            ConvImpl::Dense(k) => Some(k.packed_mut()),
            ConvImpl::Depthwise(k) => Some(k.packed_mut()),
            ConvImpl::Portable { .. } => None,
        }
    }

    /// Forward pass returning a [`Result`] with the crate's error type.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        self.run_with(x, None)
    }

    /// `activation(conv(x) + bias + residual)`: a residual connection fused into the conv.
    pub fn run_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.run_with(x, Some(residual))
    }

    /// `max_pool(self.run(x), kernel, stride, padding)`: one op on the CPU where the conv
    /// runs on the direct kernel and the windows do not overlap ([`PooledConv`]), so the
    /// conv's full-resolution output never goes to memory.
    pub fn run_pooled(
        &self,
        x: &Tensor,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<Tensor> {
        if let ConvImpl::Dense(k) = &self.imp {
            if let Some(op) = PooledConv::new(k, (kernel, stride, padding == Padding::Same)) {
                if !self.input_relu {
                    return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
                }
            }
        }
        max_pool(&self.run(x)?, kernel, stride, padding)
    }

    fn run_with(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let relued;
        let x = if self.input_relu && !matches!(self.imp, ConvImpl::Depthwise(_)) {
            relued = x.relu()?;
            &relued
        } else {
            x
        };
        match (&self.imp, residual) {
            (ConvImpl::Dense(k), None) => Ok(x.contiguous()?.apply_op1_no_bwd(&Op(k))?),
            (ConvImpl::Dense(k), Some(r)) => {
                Ok(x.contiguous()?.apply_op2_no_bwd(&r.contiguous()?, &Op(k))?)
            }
            (ConvImpl::Depthwise(k), None) => Ok(x.contiguous()?.apply_op1_no_bwd(k)?),
            (
                ConvImpl::Portable {
                    weight,
                    bias,
                    groups,
                },
                _,
            ) => {
                let y = self.portable(x, weight, *groups)?;
                let y = match bias {
                    Some(b) => add_channel_bias(&y, b)?,
                    None => y,
                };
                let y = match residual {
                    Some(r) => (y + r)?,
                    None => y,
                };
                activate(y, self.activation)
            }
            (ConvImpl::Depthwise(_), Some(_)) => Err(ModelError::InvalidInput(
                "no network adds a residual to a depthwise conv".into(),
            )),
        }
    }

    /// The convolution alone (no bias) with Candle tensor ops.
    fn portable(&self, x: &Tensor, weight: &Tensor, groups: usize) -> Result<Tensor> {
        let k = weight.dim(2)?;
        let x = match self.padding {
            Padding::Same => pad_same(x, k, self.stride)?,
            Padding::Valid => x.clone(),
        };
        let depthwise = groups > 1 && weight.dim(1)? == 1 && x.dim(1)? == groups;
        // With cuDNN a dense conv is Candle's `conv2d`, which runs on it (the algorithm cuDNN's
        // heuristics pick per shape, TF32 tensor cores included); its CPU `conv2d` is the
        // reference the kernels' tests compare against, so the route's contract is tested.
        let cudnn = cfg!(feature = "cudnn") && x.device().is_cuda();
        Ok(if depthwise {
            depthwise_conv(&x, weight, self.stride)?
        } else if groups == 1 && cudnn {
            x.conv2d(weight, 0, self.stride, 1, 1)?
        } else if groups == 1 {
            dense_conv(&x, weight, self.stride)?
        } else {
            x.conv2d(weight, 0, self.stride, 1, groups)?
        })
    }
}

/// Applies an activation with tensor ops.
fn activate(x: Tensor, activation: Activation) -> Result<Tensor> {
    Ok(match activation {
        Activation::Identity => x,
        Activation::Relu => x.relu()?,
        Activation::Relu6 => x.clamp(0f32, 6f32)?,
        Activation::Leaky(slope) => x.maximum(&(&x * slope as f64)?)?,
    })
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x).map_err(candle_core::Error::wrap)
    }
}

/// A depthwise conv followed by a 1x1 pointwise conv: TF's `separableConv2d` (3x3 depthwise,
/// `same` padding, then the pointwise conv plus bias) or MobileNet's depthwise and pointwise
/// layers. On the CPU both run as one fused op ([`Separable`]).
#[derive(Debug, Clone)]
pub struct SeparableConv {
    depthwise: Conv,
    pointwise: Conv,
}

impl SeparableConv {
    /// Loads TF's `separableConv2d` at `prefix` (`{prefix}/depthwise_filter`,
    /// `{prefix}/pointwise_filter`, `{prefix}/bias`) mapping `cin` to `cout` channels with the
    /// depthwise `stride`.
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        cin: usize,
        cout: usize,
        stride: usize,
    ) -> Result<Self> {
        Ok(Self::new(
            Conv::load_depthwise(w, &format!("{prefix}/depthwise_filter"), 3, cin, stride)?,
            Conv::load(
                w,
                &format!("{prefix}/pointwise_filter"),
                Some(&format!("{prefix}/bias")),
                (1, cin, cout),
                1,
                Padding::Valid,
            )?,
        ))
    }

    /// The block of a depthwise conv and the pointwise conv applied to its output.
    pub fn new(depthwise: Conv, pointwise: Conv) -> Self {
        Self {
            depthwise,
            pointwise,
        }
    }

    /// The same block with `activation` after the pointwise conv.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.pointwise = self.pointwise.with_activation(activation);
        self
    }

    /// The same block applied to `relu(x)` (the ReLU fused into the depthwise kernel).
    pub fn with_input_relu(mut self) -> Self {
        self.depthwise = self.depthwise.with_input_relu();
        self
    }

    /// Forward pass returning a [`Result`] with the crate's error type.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused() {
            Some(op) => Ok(x.contiguous()?.apply_op1_no_bwd(&Op(&op))?),
            None => self.pointwise.run(&self.depthwise.run(x)?),
        }
    }

    /// `activation(pointwise(depthwise(x)) + bias + residual)`: a residual connection fused
    /// into the pointwise conv.
    pub fn run_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match self.fused() {
            Some(op) => Ok(x
                .contiguous()?
                .apply_op2_no_bwd(&residual.contiguous()?, &Op(&op))?),
            None => self.pointwise.run_add(&self.depthwise.run(x)?, residual),
        }
    }

    /// The fused CPU op, when both convs run on the CPU kernels as a depthwise and a plain
    /// 1x1 conv.
    fn fused(&self) -> Option<Separable<'_>> {
        match (&self.depthwise.imp, &self.pointwise.imp) {
            (ConvImpl::Depthwise(d), ConvImpl::Dense(p)) if !self.pointwise.input_relu => {
                Separable::new(d, p)
            }
            _ => None,
        }
    }
}

impl Module for SeparableConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x).map_err(candle_core::Error::wrap)
    }
}

/// The `k * k` shifted, strided views of (already padded) NCHW `x` that a `k x k` kernel with
/// this stride multiplies, row-major over the kernel, each `[n, c, oh, ow]`.
fn taps(x: &Tensor, k: usize, stride: usize) -> Result<Vec<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = ((h - k) / stride + 1, (w - k) / stride + 1);
    // Room for `stride * out` samples from every tap, so strided picks are plain reshapes.
    let x = x
        .pad_with_zeros(2, 0, stride * oh + k - 1 - h)?
        .pad_with_zeros(3, 0, stride * ow + k - 1 - w)?;
    let mut out = Vec::with_capacity(k * k);
    for i in 0..k {
        for j in 0..k {
            let tap = x.narrow(2, i, stride * oh)?.narrow(3, j, stride * ow)?;
            out.push(if stride > 1 {
                tap.reshape((n, c, oh, stride, ow, stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((n, c, oh, ow))?
            } else {
                tap
            });
        }
    }
    Ok(out)
}

/// Unpadded dense convolution of NCHW `x` with an `[cout, cin, k, k]` filter as one batched
/// matmul over the stacked kernel taps (im2col in NCHW order, so the output needs no permute).
/// Several times faster on CPU than Candle's `conv2d` for these networks' shapes.
fn dense_conv(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (cout, _, k, _) = weight.dims4()?;
    let cols = if k == 1 && stride == 1 {
        x.clone()
    } else {
        Tensor::cat(&taps(x, k, stride)?, 1)?
    };
    let (_, _, oh, ow) = cols.dims4()?;
    // Columns are ordered (tap, channel); order the filter the same way.
    let w = weight
        .permute((0, 2, 3, 1))?
        .reshape((1, cout, k * k * c))?;
    let y = w.broadcast_matmul(&cols.reshape((n, k * k * c, oh * ow))?)?;
    Ok(y.reshape((n, cout, oh, ow))?)
}

/// Unpadded depthwise convolution of NCHW `x` with a `[c, 1, k, k]` filter, as a sum of the
/// kernel taps scaled per channel. Equal to `conv2d(groups = c)`, but Candle runs a grouped
/// conv as one conv per group, which is orders of magnitude slower for depthwise filters.
fn depthwise_conv(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let c = x.dim(1)?;
    let k = weight.dim(2)?;
    let mut acc: Option<Tensor> = None;
    for (t, tap) in taps(x, k, stride)?.into_iter().enumerate() {
        let wk = weight
            .narrow(2, t / k, 1)?
            .narrow(3, t % k, 1)?
            .reshape((1, c, 1, 1))?;
        let term = tap.broadcast_mul(&wk)?;
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty depthwise kernel".into()).into())
}

/// Adds a per-channel vector to an NCHW tensor.
pub fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_add(&bias.reshape((1, (), 1, 1))?)?)
}

/// TF's `maxPool` with a square window; `same` padding pads with -inf, as TF does.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: Padding) -> Result<Tensor> {
    if cpu_conv::runs_on(x.device()) && x.dtype() == DType::F32 {
        let (_, _, h, w) = x.dims4()?;
        let pool = MaxPool::for_input(kernel, stride, padding == Padding::Same, (h, w))
            .ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "{h}x{w} is smaller than the {kernel}x{kernel} pooling window"
                ))
            })?;
        return Ok(x.contiguous()?.apply_op1_no_bwd(&pool)?);
    }
    candle_max_pool(x, kernel, stride, padding)
}

/// [`max_pool`] with Candle's own ops, for other devices (and the reference in tests).
fn candle_max_pool(x: &Tensor, kernel: usize, stride: usize, padding: Padding) -> Result<Tensor> {
    let x = match padding {
        Padding::Valid => x.clone(),
        Padding::Same => {
            let (_, _, h, w) = x.dims4()?;
            let (top, bottom) = same_padding(h, kernel, stride);
            let (left, right) = same_padding(w, kernel, stride);
            let neg = f32::MIN;
            let x = pad_const(x, 2, top, bottom, neg)?;
            pad_const(&x, 3, left, right, neg)?
        }
    };
    Ok(x.max_pool2d_with_stride(kernel, stride)?)
}

fn pad_const(x: &Tensor, dim: usize, before: usize, after: usize, value: f32) -> Result<Tensor> {
    if before + after == 0 {
        return Ok(x.clone());
    }
    let mut parts = Vec::with_capacity(3);
    let mut shape = x.dims().to_vec();
    if before > 0 {
        shape[dim] = before;
        parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
    }
    parts.push(x.clone());
    if after > 0 {
        shape[dim] = after;
        parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest absolute difference of two tensors of one shape.
    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Σ |w · x| per output of a convolution without bias: the scale of its rounding error.
    fn magnitude(x: &Tensor, w: &Tensor, stride: usize, groups: usize, padding: Padding) -> Tensor {
        let cout = w.dim(0).unwrap();
        let zero = Tensor::zeros(cout, DType::F32, x.device()).unwrap();
        let (xa, wa) = (x.abs().unwrap(), w.abs().unwrap());
        reference(
            &xa,
            &wa,
            &zero,
            stride,
            groups,
            padding,
            Activation::Identity,
            None,
        )
    }

    /// What each output of a layer in `precision` may be off by, given its [`magnitude`]:
    /// 1e-4 in f32; with 16-bit products also 2⁻⁷ of Σ |w · x|. bf16 meets that by its
    /// rounding alone (each of the two rounded inputs within half a step of 2⁻⁷, so 2⁻⁸, of
    /// its value; the activations and the residual add no error); fp16 rounds its inputs 8×
    /// finer and its half-precision partial sums, of at most `fp16::SPAN` products, by 2⁻¹¹
    /// of themselves per step. Checked against this bound rather than a rounded reference,
    /// which depends on the format the CPU has.
    fn error_bound(precision: Precision, magnitude: &Tensor) -> Tensor {
        match precision {
            Precision::F32 => magnitude.zeros_like().unwrap() + 1e-4,
            Precision::Half => (magnitude.clone() * (1.0 / 128.0)).unwrap() + 1e-4,
        }
        .unwrap()
    }

    /// The largest excess of `|got - want|` over `bound` (≤ 0 when within it).
    fn excess(got: &Tensor, want: &Tensor, bound: &Tensor) -> f32 {
        let err = (got - want).unwrap().abs().unwrap();
        let excess = (err - bound).unwrap().flatten_all().unwrap();
        excess.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn depthwise_fast_path_equals_grouped_conv() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 1, 3, 3), &dev).unwrap();
        for stride in [1, 2] {
            let xp = pad_same(&x, 3, stride).unwrap();
            let want = xp.conv2d(&w, 0, stride, 1, 5).unwrap();
            let got = depthwise_conv(&xp, &w, stride).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "stride {stride}: {diff}");
        }
    }

    #[test]
    fn dense_fast_path_equals_conv2d() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 8), &dev).unwrap();
        for (k, stride) in [(1, 1), (1, 2), (3, 1), (3, 2), (7, 2)] {
            let w = Tensor::randn(0f32, 1.0, (7, 5, k, k), &dev).unwrap();
            let xp = pad_same(&x, k, stride).unwrap();
            let want = xp.conv2d(&w, 0, stride, 1, 1).unwrap();
            let got = dense_conv(&xp, &w, stride).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "k {k} stride {stride}: {diff}");
        }
    }

    #[test]
    fn input_affine_folds_into_a_valid_conv() {
        let dev = candle_core::Device::Cpu;
        let (scale, shift) = ([0.5f32, 2.0, -1.0], [-3.0f32, 0.25, 7.0]);
        // TF.js layout `[k, k, cin, cout]`.
        let filter = Tensor::randn(0f32, 1.0, (3, 3, 3, 4), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        let weights = WeightMap::from_tensors(
            [
                ("f".to_string(), filter.clone()),
                ("b".to_string(), bias.clone()),
            ]
            .into(),
        );
        let folded = Conv::load_with_input_affine(
            &weights,
            ("f", "b"),
            (3, 3, 4),
            (scale.as_slice(), shift.as_slice()),
        )
        .unwrap()
        .with_activation(Activation::Leaky(0.1));
        let x = (Tensor::randn(0f32, 1.0, (2, 3, 11, 9), &dev).unwrap() * 10.0).unwrap();
        let per_channel = |v: &[f32]| Tensor::new(v, &dev).unwrap().reshape((1, 3, 1, 1)).unwrap();
        let mapped = x
            .broadcast_mul(&per_channel(&scale))
            .unwrap()
            .broadcast_add(&per_channel(&shift))
            .unwrap();
        let w = filter.permute((3, 2, 0, 1)).unwrap().contiguous().unwrap();
        let want = reference(
            &mapped,
            &w,
            &bias,
            1,
            1,
            Padding::Valid,
            Activation::Leaky(0.1),
            None,
        );
        let got = folded.run(&x).unwrap();
        assert_eq!(got.dims(), &[2, 4, 9, 7]);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-3, "{diff}");
    }

    #[test]
    fn input_relu_equals_a_relu_before_the_conv() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 6, 13, 10), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        // Depthwise (fused into the kernel, strides 1 and 2) and dense (a separate op; f32
        // products, so that the reference is exact).
        for (groups, stride) in [(6, 1), (6, 2), (1, 1)] {
            let w = Tensor::randn(0f32, 1.0, (6, 6 / groups, 3, 3), &dev).unwrap();
            let conv = Conv::new(w.clone(), Some(b.clone()), stride, groups, Padding::Same)
                .unwrap()
                .with_precision(Precision::F32)
                .with_input_relu();
            let want = reference(
                &x.relu().unwrap(),
                &w,
                &b,
                stride,
                groups,
                Padding::Same,
                Activation::Identity,
                None,
            );
            let diff = max_abs_diff(&conv.run(&x).unwrap(), &want);
            assert!(diff < 1e-4, "groups {groups} stride {stride}: {diff}");
        }
    }

    /// Candle's own conv2d, bias, residual and activation: what the CPU kernels must equal.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        stride: usize,
        groups: usize,
        padding: Padding,
        activation: Activation,
        residual: Option<&Tensor>,
    ) -> Tensor {
        let k = w.dim(2).unwrap();
        let xp = match padding {
            Padding::Same => pad_same(x, k, stride).unwrap(),
            Padding::Valid => x.clone(),
        };
        let y = add_channel_bias(&xp.conv2d(w, 0, stride, 1, groups).unwrap(), b).unwrap();
        let y = match residual {
            Some(r) => (y + r).unwrap(),
            None => y,
        };
        activate(y, activation).unwrap()
    }

    #[test]
    fn cpu_kernels_equal_candle_conv2d() {
        let dev = candle_core::Device::Cpu;
        let acts = [
            Activation::Identity,
            Activation::Relu,
            Activation::Relu6,
            Activation::Leaky(0.1),
        ];
        // (batch, cin, cout, h, w, kernel, stride, padding)
        let dense = [
            (1, 3, 8, 23, 17, 7, 2, Padding::Valid),
            (2, 5, 7, 9, 8, 3, 1, Padding::Same),
            (3, 16, 9, 11, 13, 3, 2, Padding::Same),
            (1, 6, 5, 12, 7, 3, 2, Padding::Valid),
            (1, 8, 4, 6, 6, 1, 1, Padding::Valid),
            (2, 4, 6, 10, 7, 1, 2, Padding::Same),
            (4, 32, 24, 5, 5, 3, 1, Padding::Same),
            // More output channels than positions: split by channel blocks.
            (1, 40, 48, 4, 5, 3, 1, Padding::Same),
            (1, 24, 36, 7, 6, 3, 2, Padding::Same),
            // At least 384 output columns: the AVX-512 panel kernel where the CPU has it.
            (1, 24, 20, 33, 35, 1, 1, Padding::Valid),
            (2, 9, 13, 40, 31, 3, 1, Padding::Same),
            (1, 10, 11, 70, 66, 3, 2, Padding::Same),
            // Few taps per output (first layers): the direct kernel, in blocks of four
            // channels plus single channels, across wide, blocked and leftover columns.
            (1, 3, 32, 31, 45, 3, 2, Padding::Same),
            (2, 3, 6, 13, 40, 3, 1, Padding::Same),
        ];
        for (i, &(n, cin, cout, h, w, k, stride, padding)) in dense.iter().enumerate() {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let act = acts[i % acts.len()];
            let want = reference(&x, &wt, &b, stride, 1, padding, act, None);
            let r = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
            let want_add = reference(&x, &wt, &b, stride, 1, padding, act, Some(&r));
            let magnitude = magnitude(&x, &wt, stride, 1, padding);
            for precision in [Precision::F32, Precision::Half] {
                let bound = error_bound(precision, &magnitude);
                let conv = Conv::new(wt.clone(), Some(b.clone()), stride, 1, padding)
                    .unwrap()
                    .with_activation(act)
                    .with_precision(precision);
                assert!(matches!(conv.imp, ConvImpl::Dense(_)));
                let got = conv.run(&x).unwrap();
                assert_eq!(got.dims(), want.dims(), "case {i}");
                let over = excess(&got, &want, &bound);
                assert!(over <= 0.0, "{precision:?} dense case {i}: {over}");

                let got = conv.run_add(&x, &r).unwrap();
                let over = excess(&got, &want_add, &bound);
                assert!(
                    over <= 0.0,
                    "{precision:?} dense case {i} with residual: {over}"
                );
            }
        }
        // (batch, channels, h, w, kernel, stride, padding)
        let depthwise = [
            (1, 5, 9, 8, 3, 1, Padding::Same),
            (2, 7, 11, 13, 3, 2, Padding::Same),
            (3, 4, 8, 8, 3, 2, Padding::Valid),
            (1, 3, 10, 9, 5, 1, Padding::Same),
            // Rows wider than the kernel's widest block, with leftovers.
            (1, 3, 37, 70, 3, 1, Padding::Same),
            (2, 4, 35, 81, 3, 2, Padding::Same),
            // Stride-2 rows of several column blocks: borders, whole interior blocks, a tail.
            (1, 3, 9, 203, 3, 2, Padding::Same),
            (1, 2, 8, 202, 3, 2, Padding::Valid),
            // Stride-1 planes of several row bands, the last one partial.
            (1, 2, 150, 61, 3, 1, Padding::Same),
            (2, 2, 150, 61, 3, 1, Padding::Valid),
        ];
        for (i, &(n, c, h, w, k, stride, padding)) in depthwise.iter().enumerate() {
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.5, (c, 1, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let act = acts[(i + 1) % acts.len()];
            let conv = Conv::new(wt.clone(), Some(b.clone()), stride, c, padding)
                .unwrap()
                .with_activation(act);
            assert!(matches!(conv.imp, ConvImpl::Depthwise(_)));
            let got = conv.run(&x).unwrap();
            let want = reference(&x, &wt, &b, stride, c, padding, act, None);
            assert_eq!(got.dims(), want.dims(), "case {i}");
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "depthwise case {i}: {diff}");
        }
    }

    #[test]
    fn fused_separable_blocks_equal_depthwise_then_pointwise() {
        let dev = candle_core::Device::Cpu;
        // (batch, cin, cout, h, w, stride): at 1 and 3 threads these run as one image per
        // thread, as bands in parallel (several, the last partial) and as one band using
        // every thread.
        let shapes = [
            (1, 64, 24, 40, 37, 1),
            (1, 64, 16, 81, 75, 2),
            (2, 5, 7, 9, 8, 1),
            (3, 6, 9, 11, 13, 2),
            (1, 256, 40, 6, 7, 1),
            (1, 96, 32, 9, 5, 2),
        ];
        for (i, &(n, cin, cout, h, w, stride)) in shapes.iter().enumerate() {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let dw = Tensor::randn(0f32, 0.5, (cin, 1, 3, 3), &dev).unwrap();
            let db = Tensor::randn(0f32, 1.0, cin, &dev).unwrap();
            let pw = Tensor::randn(0f32, 0.2, (cout, cin, 1, 1), &dev).unwrap();
            let pb = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let relu_input = i % 2 == 1;
            let input = if relu_input {
                x.relu().unwrap()
            } else {
                x.clone()
            };
            let act = Activation::Relu6;
            let hidden = reference(&input, &dw, &db, stride, cin, Padding::Same, act, None);
            let (_, _, oh, ow) = hidden.dims4().unwrap();
            let r = Tensor::randn(0f32, 1.0, (n, cout, oh, ow), &dev).unwrap();
            let act = Activation::Leaky(0.1);
            let want = reference(&hidden, &pw, &pb, 1, 1, Padding::Valid, act, None);
            let want_add = reference(&hidden, &pw, &pb, 1, 1, Padding::Valid, act, Some(&r));
            let magnitude = magnitude(&hidden, &pw, 1, 1, Padding::Valid);
            for precision in [Precision::F32, Precision::Half] {
                let bound = error_bound(precision, &magnitude);
                let block = SeparableConv::new(
                    Conv::new(dw.clone(), Some(db.clone()), stride, cin, Padding::Same)
                        .unwrap()
                        .with_activation(Activation::Relu6),
                    Conv::new(pw.clone(), Some(pb.clone()), 1, 1, Padding::Valid)
                        .unwrap()
                        .with_precision(precision),
                )
                .with_activation(Activation::Leaky(0.1));
                let block = if relu_input {
                    block.with_input_relu()
                } else {
                    block
                };
                assert!(block.fused().is_some(), "case {i}");
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let (got, got_add) =
                        pool.install(|| (block.run(&x).unwrap(), block.run_add(&x, &r).unwrap()));
                    assert_eq!(got.dims(), want.dims(), "case {i}");
                    let over = excess(&got, &want, &bound);
                    assert!(
                        over <= 0.0,
                        "{precision:?} case {i}, {threads} threads: {over}"
                    );
                    let over = excess(&got_add, &want_add, &bound);
                    assert!(
                        over <= 0.0,
                        "{precision:?} case {i}, {threads} threads, residual: {over}"
                    );
                }
            }
        }
    }

    #[test]
    fn folded_affine_equals_conv_then_affine() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 7, 6), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.5, (5, 4, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let scale = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let shift = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        // In f32: the fold's algebra is what is checked, not bf16 rounding.
        let plain = Conv::new(wt, Some(b), 1, 1, Padding::Same)
            .unwrap()
            .with_precision(Precision::F32);
        let want = add_channel_bias(
            &plain
                .run(&x)
                .unwrap()
                .broadcast_mul(&scale.reshape((1, (), 1, 1)).unwrap())
                .unwrap(),
            &shift,
        )
        .unwrap()
        .relu()
        .unwrap();
        let folded = plain
            .fold_affine(&scale, &shift)
            .unwrap()
            .with_activation(Activation::Relu);
        let diff = max_abs_diff(&folded.run(&x).unwrap(), &want);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn cpu_max_pool_equals_candle_pooling() {
        let dev = candle_core::Device::Cpu;
        // (batch, channels, h, w, kernel, stride, padding): Tiny's 2/2 and 2/1 `same` pools
        // on odd and even sizes, and the ResNet's 3/2 `valid` pool.
        let shapes = [
            (1, 16, 207, 207, 2, 2, Padding::Same),
            (2, 3, 13, 13, 2, 1, Padding::Same),
            (1, 5, 8, 11, 2, 2, Padding::Same),
            (3, 4, 75, 75, 3, 2, Padding::Valid),
            (1, 2, 10, 9, 3, 2, Padding::Same),
            (1, 2, 9, 7, 2, 2, Padding::Valid),
            (2, 2, 6, 5, 2, 1, Padding::Valid),
        ];
        for (n, c, h, w, k, s, padding) in shapes {
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let ours = max_pool(&x, k, s, padding).unwrap();
            let reference = candle_max_pool(&x, k, s, padding).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "{h}x{w} k{k} s{s}");
            assert_eq!(max_abs_diff(&ours, &reference), 0.0, "{h}x{w} k{k} s{s}");
        }
        let tiny = Tensor::zeros((1, 1, 2, 2), DType::F32, &dev).unwrap();
        assert!(max_pool(&tiny, 3, 2, Padding::Valid).is_err());
    }

    #[test]
    fn pooled_conv_equals_conv_then_pooling() {
        let dev = candle_core::Device::Cpu;
        // (batch, cin, cout, side, conv stride, conv padding, pool kernel, pool stride, pool
        // padding): Tiny's first layer (smaller), a channel tail, odd sizes, a batch split by
        // image.
        let cases = [
            (1, 3, 16, 42, 1, Padding::Valid, 2, 2, Padding::Same),
            (2, 3, 6, 17, 1, Padding::Same, 2, 2, Padding::Same),
            (3, 2, 5, 15, 2, Padding::Same, 2, 2, Padding::Valid),
            (1, 3, 8, 23, 2, Padding::Same, 3, 3, Padding::Same),
            // Overlapping windows: the conv and the pool run one after the other.
            (1, 3, 4, 20, 1, Padding::Same, 3, 2, Padding::Same),
        ];
        for (n, cin, cout, side, stride, padding, k, s, pool_padding) in cases {
            let x = Tensor::randn(0f32, 1.0, (n, cin, side, side + 2), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let conv = Conv::new(w, Some(b), stride, 1, padding)
                .unwrap()
                .with_activation(Activation::Leaky(0.1));
            let ConvImpl::Dense(kernel) = &conv.imp else {
                panic!("a CPU conv runs on the packed kernels")
            };
            let fusable = PooledConv::new(kernel, (k, s, pool_padding == Padding::Same));
            assert_eq!(fusable.is_some(), s >= k);
            let fused = conv.run_pooled(&x, k, s, pool_padding).unwrap();
            let apart = candle_max_pool(&conv.run(&x).unwrap(), k, s, pool_padding).unwrap();
            let case = format!("{n}x{cin}->{cout} {side} s{stride} pool {k}/{s}");
            assert_eq!(fused.dims(), apart.dims(), "{case}");
            assert_eq!(max_abs_diff(&fused, &apart), 0.0, "{case}");
        }
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(512, 3, 2), (0, 1));
        assert_eq!(same_padding(511, 3, 2), (1, 1));
        assert_eq!(same_padding(150, 7, 2), (2, 3));
        assert_eq!(same_padding(16, 3, 1), (1, 1));
        assert_eq!(same_padding(16, 1, 1), (0, 0));
    }
}
