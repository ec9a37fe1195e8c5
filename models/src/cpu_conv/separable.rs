//! Depthwise-separable blocks fused: a depthwise convolution followed by a 1×1 (pointwise) one,
//! run a band of output rows at a time. The band's depthwise output for every channel is
//! computed into a buffer small enough to stay in cache and multiplied by the pointwise filter
//! from there, so the depthwise output is never written to memory and read back whole.

use candle_core::{CpuStorage, Layout, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::panel_gemm;
use super::{
    as_room, check_residual, nchw, stencil::ColumnMasks, DenseConv, DepthwiseConv, Geometry,
    PaddedPlanes, ResidualKernel, SharedOut,
};

/// Padded input and depthwise output samples a band aims at: 192 KiB, inside L2.
const BAND_SAMPLES: usize = 48 * 1024;

/// Fewest output columns per band on `gemm`, so that packing the pointwise filter for each
/// band's product stays a small share of its multiply-adds.
const MIN_BAND_COLUMNS: usize = 128;

/// Fewest output columns per band: where the CPU runs the panel kernel, as many as it takes
/// (measured, 128 → 128 at 128²: 107–113 against 102–104 GFLOP/s with 128-column bands on
/// `gemm`, three runs alternated; the landmark net 3–10% faster per face).
fn min_band_columns() -> usize {
    #[cfg(target_arch = "x86_64")]
    if panel_gemm::available() {
        return panel_gemm::MIN_COLUMNS;
    }
    MIN_BAND_COLUMNS
}

/// Fewest output positions per output channel for the fused run. Below it the pointwise gemm
/// dominates and runs faster whole (measured: fused 5–8% slower from SSD's 256-channel 64²
/// blocks on, 10–25% faster on its 32–128-channel blocks at 128² and 256²); the two kernels
/// then run one after the other.
const FUSED_COLUMNS_PER_OUTPUT_CHANNEL: usize = 16;

/// A depthwise convolution and the pointwise convolution that follows it, as one op.
#[derive(Debug, Clone, Copy)]
pub struct Separable<'a> {
    depthwise: &'a DepthwiseConv,
    pointwise: &'a DenseConv,
}

/// How one image's bands share the threads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Split {
    /// Everything on the calling thread (the batch is split across threads instead).
    Serial,
    /// Bands in parallel, each on one thread.
    Bands,
    /// Bands one after another, each using every thread.
    Inside,
}

impl<'a> Separable<'a> {
    /// The fused block, if `pointwise` is a 1×1 stride-1 unpadded conv on the depthwise
    /// output's channels.
    pub fn new(depthwise: &'a DepthwiseConv, pointwise: &'a DenseConv) -> Option<Self> {
        pointwise
            .is_pointwise_on(depthwise.channels())
            .then_some(Self {
                depthwise,
                pointwise,
            })
    }

    /// Output rows `band * rows..` of one image: the band's input rows padded (unless the
    /// depthwise conv reads them straight from the image), the depthwise
    /// output of every channel into the scratch buffer (planes and channels in parallel unless
    /// `parallelism` is `None`), then the pointwise gemm from there into the band's columns of
    /// the output.
    fn band(&self, image: &Image, band: usize, scratch: &mut Scratch, parallelism: Parallelism) {
        let (oh, ow) = image.output;
        let oy0 = band * image.rows;
        let columns = image.rows.min(oh - oy0) * ow;
        let parallel = !matches!(parallelism, Parallelism::None);
        let Scratch {
            padded,
            columns: dw_out,
            row,
        } = scratch;
        if let Some(padded) = padded.as_mut() {
            self.depthwise
                .fill_band(padded, image.x, (image.h, oy0), parallel);
        }
        dw_out.resize(self.depthwise.channels() * columns, 0.0);
        let padded = padded.as_ref();
        let channel = |(c, dst): (usize, &mut [f32]), row: &mut Vec<f32>| match padded {
            Some(padded) => self.depthwise.channel_rows(padded, c, (0, ow), dst, row),
            None => {
                let input = (image.x, image.h, image.w);
                let columns = image.columns.expect("direct runs have column masks");
                // SAFETY: `direct_rows` writes only samples.
                let dst = unsafe { as_room(dst) };
                self.depthwise
                    .direct_rows(input, (&image.geo, columns), c, oy0, dst)
            }
        };
        if parallel {
            dw_out
                .par_chunks_mut(columns)
                .enumerate()
                .for_each_init(Vec::new, |row, item| channel(item, row));
        } else {
            for item in dw_out.chunks_mut(columns).enumerate() {
                channel(item, row);
            }
        }
        let offset = oy0 * ow;
        // SAFETY: the output holds `cout` rows of `oh * ow`; this band writes columns
        // `offset..offset + columns` of each, which no other band touches.
        unsafe {
            self.pointwise.gemm_columns(
                dw_out,
                (image.out.ptr().add(offset), columns, oh * ow),
                image.residual.map(|r| &r[offset..]),
                parallelism,
            );
        }
    }
}

/// One image as its bands see it.
struct Image<'a> {
    /// The input, `[cin, h, w]`.
    x: &'a [f32],
    h: usize,
    w: usize,
    /// The depthwise conv's geometry.
    geo: Geometry,
    /// Its column masks, where it reads the input directly.
    columns: Option<&'a ColumnMasks>,
    residual: Option<&'a [f32]>,
    out: SharedOut,
    output: (usize, usize),
    rows: usize,
}

/// A thread's buffers: a band's padded input rows (none where the depthwise conv reads its
/// input directly), its depthwise output (`cin × columns`) and the depthwise kernel's row
/// scratch.
struct Scratch {
    padded: Option<PaddedPlanes>,
    columns: Vec<f32>,
    row: Vec<f32>,
}

/// Output rows per band for `cin → cout` channels, input rows `w` wide and an `oh × ow`
/// output: about [`BAND_SAMPLES`] padded input and depthwise output samples, but at least
/// `cout` and [`min_band_columns`] columns (each band's gemm packs the `cout × cin` filter
/// again, which has to stay small next to the depthwise output it saves moving); with at least
/// `threads` bands, a count that is a multiple of `threads`, so no thread waits on a last odd
/// band.
fn band_rows(
    (cin, cout, w): (usize, usize, usize),
    (oh, ow): (usize, usize),
    geo: Geometry,
    threads: usize,
) -> usize {
    let pw = w + geo.pad.2 + geo.pad.3;
    // A band of `r` rows holds `r * stride + kernel - 1` padded input rows and `r` output
    // rows per channel.
    let per_row = cin * (geo.stride * pw + ow);
    let fixed = cin * (geo.kernel - 1) * pw;
    let rows = (BAND_SAMPLES.saturating_sub(fixed) / per_row)
        .max(min_band_columns().max(cout).div_ceil(ow))
        .clamp(1, oh);
    let bands = oh.div_ceil(rows);
    if bands >= threads {
        oh.div_ceil(bands.next_multiple_of(threads))
    } else {
        rows
    }
}

impl ResidualKernel for Separable<'_> {
    const NAME: &'static str = "rollcall-separable-conv";

    fn forward(
        &self,
        x: &[f32],
        x_layout: &Layout,
        residual: Option<(&[f32], &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cin = self.depthwise.channels();
        let cout = self.pointwise.cout();
        let (n, h, w) = nchw(x_layout, cin)?;
        let (geo, (oh, ow)) = self.depthwise.geometry(h, w)?;
        let out_shape = Shape::from((n, cout, oh, ow));
        check_residual(residual, &out_shape)?;
        if oh * ow < FUSED_COLUMNS_PER_OUTPUT_CHANNEL * cout {
            let (hidden, shape) = self.depthwise.forward(x, x_layout)?;
            let CpuStorage::F32(hidden) = hidden else {
                unreachable!("the depthwise kernel writes f32")
            };
            return self
                .pointwise
                .forward(&hidden, &Layout::contiguous(shape), residual);
        }
        let threads = rayon::current_num_threads();
        let split_images = threads == 1 || n >= threads;
        let rows = band_rows(
            (cin, cout, w),
            (oh, ow),
            geo,
            if split_images { 1 } else { threads },
        );
        let bands = oh.div_ceil(rows);
        let (image_in, image_out) = (cin * h * w, cout * oh * ow);
        // Every sample is written through `SharedOut` by a band's gemm, so the output is not
        // cleared first.
        let len = n * image_out;
        let mut out = Vec::with_capacity(len);
        let base = SharedOut(out.as_mut_ptr());
        // Column masks where the depthwise conv reads the input directly, padded rows otherwise.
        let columns =
            (self.depthwise.runs_direct(&geo)).then(|| self.depthwise.column_masks(&geo, (w, ow)));
        let new_scratch = || Scratch {
            padded: columns
                .is_none()
                .then(|| PaddedPlanes::for_output_rows(cin, rows, w, geo)),
            columns: Vec::new(),
            row: Vec::new(),
        };
        let image = |b: usize, split: Split| {
            let image = Image {
                x: &x[b * image_in..(b + 1) * image_in],
                h,
                w,
                geo,
                columns: columns.as_ref(),
                residual: residual.map(|(r, _)| &r[b * image_out..(b + 1) * image_out]),
                // SAFETY: image `b`'s outputs lie inside `out`'s capacity.
                out: SharedOut(unsafe { base.ptr().add(b * image_out) }),
                output: (oh, ow),
                rows,
            };
            if split == Split::Bands {
                (0..bands)
                    .into_par_iter()
                    .for_each_init(new_scratch, |scratch, band| {
                        self.band(&image, band, scratch, Parallelism::None)
                    });
                return;
            }
            let parallelism = match split {
                Split::Inside => Parallelism::Rayon(threads),
                _ => Parallelism::None,
            };
            let mut scratch = new_scratch();
            for band in 0..bands {
                self.band(&image, band, &mut scratch, parallelism);
            }
        };
        if split_images {
            (0..n).into_par_iter().for_each(|b| image(b, Split::Serial));
        } else {
            let split = if bands >= threads {
                Split::Bands
            } else {
                Split::Inside
            };
            (0..n).for_each(|b| image(b, split));
        }
        // SAFETY: the bands of every image wrote each of its `cout` rows of `oh * ow` samples.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), out_shape))
    }
}
