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
        let y = x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?;
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

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(512, 3, 2), (0, 1));
        assert_eq!(same_padding(511, 3, 2), (1, 1));
        assert_eq!(same_padding(150, 7, 2), (2, 3));
        assert_eq!(same_padding(16, 3, 1), (1, 1));
        assert_eq!(same_padding(16, 1, 1), (0, 0));
    }
}
