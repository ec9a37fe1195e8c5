//! Depthwise convolutions (one filter per channel), with the bias and activation fused: 3×3
//! filters at stride 1 or 2 on AVX-512 through [`stencil::depthwise3`], straight from the input
//! planes; otherwise [`stencil::depthwise_row`] over each channel plane, zero-padded and phased
//! once. At stride 1 bands of rows are one long row each (one call per band); strided planes go
//! row by row.
//! [`super::Separable`] runs the same rows band by band, straight into a pointwise conv.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use super::{
    input, nchw, stencil, stencil::ColumnMasks, Geometry, Packed, PaddedPlanes, PaddingFn,
};

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

    /// Whether this filter under `geo` runs on [`stencil::depthwise3`], straight from the
    /// input planes ([`Self::direct_rows`]), instead of through padded planes.
    pub(super) fn runs_direct(&self, geo: &Geometry) -> bool {
        geo.kernel == 3 && stencil::depthwise3_runs(geo.stride)
    }

    /// The column masks [`Self::direct_rows`] takes for a `w`-wide input under `geo`.
    pub(super) fn column_masks(&self, geo: &Geometry, (w, ow): (usize, usize)) -> ColumnMasks {
        ColumnMasks::new(geo.stride, (w, ow), geo.pad.2)
    }

    /// Output rows `oy0..oy0 + dst.len() / ow` of channel `c` straight from `image`
    /// (`[channels, h, w]`), where [`Self::runs_direct`], with `columns` from
    /// [`Self::column_masks`]. Writes every sample of `dst`.
    pub(super) fn direct_rows(
        &self,
        (image, h, w): (&[f32], usize, usize),
        (geo, columns): (&Geometry, &ColumnMasks),
        c: usize,
        oy0: usize,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let plane = stencil::Plane {
            data: &image[c * h * w..(c + 1) * h * w],
            size: (h, w),
            top: geo.pad.0,
            relu: self.input_relu,
        };
        let taps = self.packed.weight[c * 9..(c + 1) * 9]
            .try_into()
            .expect("a 3×3 filter has 9 taps");
        let filter = (taps, self.packed.bias[c], self.packed.activation);
        stencil::depthwise3(&plane, columns, filter, (dst, oy0));
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

    /// Every plane of the batch on its own: read straight from the input where
    /// [`Self::runs_direct`], otherwise padded (so it stays in cache) and convolved.
    pub(super) fn forward(
        &self,
        x: &[f32],
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = nchw(layout, self.channels)?;
        let (geo, (oh, ow)) = self.packed.geometry(h, w)?;
        let len = n * self.channels * oh * ow;
        let out = if self.runs_direct(&geo) {
            // Not cleared first: the kernel writes every sample, and clearing megabytes
            // costs about as much as writing them.
            let mut out = Vec::with_capacity(len);
            let columns = self.column_masks(&geo, (w, ow));
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(plane, dst)| {
                    let image = &x[(plane / self.channels) * self.channels * h * w..];
                    let c = plane % self.channels;
                    self.direct_rows((image, h, w), (&geo, &columns), c, 0, dst);
                });
            // SAFETY: `direct_rows` wrote every sample of every plane.
            unsafe { out.set_len(len) };
            out
        } else {
            let mut out = vec![0f32; len];
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
            out
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_conv::Activation;

    /// Where this CPU runs 3×3 filters straight from the input, the padded-plane rows that other
    /// CPUs run give the same outputs: both strides, symmetric, TF-style and no padding, with
    /// and without the input ReLU, rows with tails, and a band starting below the first row.
    #[test]
    fn padded_plane_rows_equal_direct_rows() {
        let paddings: [PaddingFn; 3] = [
            |_, _, _, _| (1, 1, 1, 1),
            |_, _, _, _| (0, 1, 0, 1),
            |_, _, _, _| (0, 0, 0, 0),
        ];
        let (c, h, w) = (3, 11, 45);
        let x: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let weight: Vec<f32> = (0..c * 9)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
            .collect();
        for stride in [1, 2] {
            for padding in paddings {
                for relu in [false, true] {
                    let bias = vec![0.5, -0.25, 1.0];
                    let mut conv =
                        DepthwiseConv::new(weight.clone(), Some(bias), (c, 3), stride, padding);
                    conv.input_relu = relu;
                    conv.packed_mut().activation = Activation::Relu6;
                    let (geo, (oh, ow)) = conv.geometry(h, w).unwrap();
                    if !conv.runs_direct(&geo) {
                        return;
                    }
                    let columns = conv.column_masks(&geo, (w, ow));
                    let mut padded = PaddedPlanes::new(c, (h, w), geo);
                    padded.fill(&x, relu, false);
                    let mut scratch = Vec::new();
                    for ch in 0..c {
                        let mut want = vec![0f32; oh * ow];
                        conv.channel_rows(&padded, ch, (0, ow), &mut want, &mut scratch);
                        let band = 3;
                        let mut got = vec![f32::NAN; (oh - band) * ow];
                        let input = (x.as_slice(), h, w);
                        // SAFETY: `direct_rows` writes only samples; a NaN left unwritten
                        // fails the comparison below.
                        let room = unsafe { crate::cpu_conv::as_room(&mut got) };
                        conv.direct_rows(input, (&geo, &columns), ch, band, room);
                        for (i, (g, w)) in got.iter().zip(&want[band * ow..]).enumerate() {
                            assert!(
                                (g - w).abs() <= 1e-5,
                                "stride {stride} {:?} relu {relu} channel {ch} at {i}: {g} vs {w}",
                                geo.pad
                            );
                        }
                    }
                }
            }
        }
    }
}
