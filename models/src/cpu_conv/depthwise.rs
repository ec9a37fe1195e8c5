//! Depthwise convolutions (one filter per channel): [`stencil::depthwise_row`] over each
//! channel plane, zero-padded and phased once, with the bias and activation fused. At stride 1
//! bands of rows are one long row each (one call per band); strided planes go row by row.
//! [`super::Separable`] runs the same rows band by band, straight into a pointwise conv.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use super::{input, nchw, stencil, Geometry, Packed, PaddedPlanes, PaddingFn};

/// Samples of a stride-1 band: the output stays in L1 across the taps' passes.
const BAND_SAMPLES: usize = 4096;

/// A depthwise convolution (one filter per channel) with bias and activation, optionally
/// reading its input through a ReLU.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// Filter rows of `k * k`.
    packed: Packed,
    channels: usize,
    /// Whether the input goes through a ReLU on its way into the padded planes.
    pub input_relu: bool,
}

impl DepthwiseConv {
    /// Packs a `[channels, 1, k, k]` filter (as its contiguous data) and an optional bias.
    pub fn new(
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        (channels, kernel): (usize, usize),
        stride: usize,
        padding: PaddingFn,
    ) -> Self {
        debug_assert_eq!(weight.len(), channels * kernel * kernel);
        Self {
            packed: Packed::new(weight, bias, channels, kernel, stride, padding),
            channels,
            input_relu: false,
        }
    }

    /// The packed filter, bias and activation.
    pub fn packed_mut(&mut self) -> &mut Packed {
        &mut self.packed
    }

    /// Channels (input and output).
    pub(super) fn channels(&self) -> usize {
        self.channels
    }

    /// The geometry and output size for an `h × w` input.
    pub(super) fn geometry(
        &self,
        h: usize,
        w: usize,
    ) -> candle_core::Result<(Geometry, (usize, usize))> {
        self.packed.geometry(h, w)
    }

    /// Fills `padded` (room for a band of output rows) from one image (`[channels, h, w]`):
    /// the input rows of the band's first output row `oy0` on, through the input ReLU if there
    /// is one; the planes in parallel when `parallel`.
    pub(super) fn fill_band(
        &self,
        padded: &mut PaddedPlanes,
        image: &[f32],
        (h, oy0): (usize, usize),
        parallel: bool,
    ) {
        let first = (oy0 * padded.geo.stride) as isize - padded.geo.pad.0 as isize;
        padded.fill_rows(image, h, first, self.input_relu, parallel);
    }

    /// Output rows `oy0..oy0 + dst.len() / ow` of channel `c`, read from plane `c % planes`
    /// of `padded`. At stride 1 bands of rows are one long row each (one
    /// [`stencil::depthwise_row`] over a band small enough to stay in L1), each output row
    /// computed over the padded width into `scratch`, then the samples past `ow` dropped;
    /// strided planes go row by row.
    pub(super) fn channel_rows(
        &self,
        padded: &PaddedPlanes,
        c: usize,
        (oy0, ow): (usize, usize),
        dst: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let taps = padded.geo.kernel * padded.geo.kernel;
        let plane = c % padded.planes();
        let (weight, bias) = (
            &self.packed.weight[c * taps..(c + 1) * taps],
            self.packed.bias[c],
        );
        let activation = self.packed.activation;
        let mut srcs = Vec::with_capacity(taps);
        if padded.geo.stride == 1 {
            let pw = padded.padded_width();
            let band = (BAND_SAMPLES / pw).max(1);
            for (b, dst) in dst.chunks_mut(band * ow).enumerate() {
                let rows = dst.len() / ow;
                scratch.resize((rows - 1) * pw + ow, 0.0);
                padded.plane_taps(plane, oy0 + b * band, &mut srcs);
                stencil::depthwise_row(&srcs, weight, bias, activation, scratch);
                for (row, src) in dst.chunks_mut(ow).zip(scratch.chunks(pw)) {
                    row.copy_from_slice(&src[..ow]);
                }
            }
        } else {
            for (r, row) in dst.chunks_mut(ow).enumerate() {
                padded.tap_rows(plane..plane + 1, oy0 + r, &mut srcs);
                stencil::depthwise_row(&srcs, weight, bias, activation, row);
            }
        }
    }

    /// Every plane of the batch on its own: padded (so it stays in cache) and convolved.
    pub(super) fn forward(
        &self,
        x: &[f32],
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = nchw(layout, self.channels)?;
        let (geo, (oh, ow)) = self.packed.geometry(h, w)?;
        let mut out = vec![0f32; n * self.channels * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || (PaddedPlanes::new(1, (h, w), geo), Vec::new()),
            |(padded, scratch), (plane, dst)| {
                padded.fill(
                    &x[plane * h * w..(plane + 1) * h * w],
                    self.input_relu,
                    false,
                );
                self.channel_rows(padded, plane % self.channels, (0, ow), dst, scratch);
            },
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, self.channels, oh, ow)),
        ))
    }
}

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "rollcall-depthwise-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(input(storage, layout)?, layout)
    }
}
