//! Building blocks shared by the networks: convolutions with TensorFlow's padding rules.
//! Tensors are NCHW; filters are converted from TF.js layout once, at load time.

use candle_core::{Module, Tensor};

use crate::error::Result;
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

/// A 2-D convolution (optionally grouped) with bias and TF padding semantics.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Filter in `[out, in / groups, kh, kw]`.
    pub weight: Tensor,
    /// Per-output-channel bias.
    pub bias: Option<Tensor>,
    /// Stride along both axes.
    pub stride: usize,
    /// Channel groups (the channel count for a depthwise conv).
    pub groups: usize,
    /// Padding mode.
    pub padding: Padding,
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
        Ok(Self {
            weight,
            bias,
            stride,
            groups: 1,
            padding,
        })
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
        Ok(Self {
            weight,
            bias: None,
            stride,
            groups: channels,
            padding: Padding::Same,
        })
    }

    /// Kernel size.
    fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }

    /// Forward pass returning a [`Result`] with the crate's error type.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.padding {
            Padding::Same => pad_same(x, self.kernel(), self.stride)?,
            Padding::Valid => x.clone(),
        };
        let depthwise = self.groups > 1 && self.weight.dims()[1] == 1 && x.dim(1)? == self.groups;
        let y = if depthwise {
            depthwise_conv(&x, &self.weight, self.stride)?
        } else if self.groups == 1 {
            dense_conv(&x, &self.weight, self.stride)?
        } else {
            x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x).map_err(candle_core::Error::wrap)
    }
}

/// TF's `separableConv2d` (3x3 depthwise, `same` padding, then a 1x1 pointwise) plus bias,
/// from `{prefix}/depthwise_filter`, `{prefix}/pointwise_filter` and `{prefix}/bias`.
#[derive(Debug, Clone)]
pub struct SeparableConv {
    depthwise: Conv,
    pointwise: Conv,
}

impl SeparableConv {
    /// Loads the block at `prefix` mapping `cin` to `cout` channels with the depthwise `stride`.
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        cin: usize,
        cout: usize,
        stride: usize,
    ) -> Result<Self> {
        Ok(Self {
            depthwise: Conv::load_depthwise(
                w,
                &format!("{prefix}/depthwise_filter"),
                3,
                cin,
                stride,
            )?,
            pointwise: Conv::load(
                w,
                &format!("{prefix}/pointwise_filter"),
                Some(&format!("{prefix}/bias")),
                (1, cin, cout),
                1,
                Padding::Valid,
            )?,
        })
    }

    /// Forward pass returning a [`Result`] with the crate's error type.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        self.pointwise.run(&self.depthwise.run(x)?)
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

/// Multiplies an NCHW tensor by a per-channel vector.
pub fn mul_channel(x: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?)
}

/// TF's `maxPool` with a square window; `same` padding pads with -inf, as TF does.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: Padding) -> Result<Tensor> {
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
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(512, 3, 2), (0, 1));
        assert_eq!(same_padding(511, 3, 2), (1, 1));
        assert_eq!(same_padding(150, 7, 2), (2, 3));
        assert_eq!(same_padding(16, 3, 1), (1, 1));
        assert_eq!(same_padding(16, 1, 1), (0, 0));
    }
}
