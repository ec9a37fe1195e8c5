//! The matrix product behind dense convolutions on CPUs with AVX-512:
//! `dst = act(W · cols + bias [+ residual])`, written to `dst` once.
//!
//! The filter is packed once into panels of [`ROWS`] output channels (`[depth][ROWS]`, zero
//! rows padding the last panel). The column matrix is packed per tile of [`COLUMNS`] outputs
//! and at most [`MAX_DEPTH`] inner steps into a contiguous buffer that stays in cache while
//! every channel panel runs over it. The micro-kernel holds `ROWS × COLUMNS` sums in 24 of
//! the 32 vector registers: the bias (and residual) seed them, the activation runs on them and
//! they are stored once. The `gemm` crate's path instead pre-fills the output with the bias,
//! multiplies into it with its AVX2 kernel (16 registers) and passes over it again for the
//! activation.

use std::arch::x86_64::*;

use gemm::Parallelism;
use rayon::prelude::*;

use super::{Activation, SharedOut};

/// Fewest output columns worth this kernel, 8 full tiles (the caller keeps `gemm` below).
/// Measured with `kernels` on an AVX-512 AMD EPYC, alternated against `gemm`: 1×1 64 → 128 at
/// 128² (16384 columns) 97–145 against 76–103 GFLOP/s in five runs, 512 → 512 at 32² (1024)
/// and the ResNet's 3×3 at 35² (1225) level; 1024 → 1024 at 16² (256 columns) 5–10% behind,
/// and the ResNet's 3×3 at 8² and 4² (64 and 16 columns, mostly idle lanes in a 48-column
/// tile) 101 and 62 against 149 and 152. Fused separable blocks run bands this wide on it.
pub const MIN_COLUMNS: usize = 384;

/// Output channels per filter panel (one broadcast each per inner step).
const ROWS: usize = 8;

/// Vector registers per channel in the micro-kernel.
const VECTORS: usize = 3;

/// Output columns per tile.
const COLUMNS: usize = 16 * VECTORS;

/// Most inner steps packed at once: a `MAX_DEPTH × COLUMNS` tile is 72 KiB, inside L2.
const MAX_DEPTH: usize = 384;

/// Whether this CPU runs the kernel (AVX-512F).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// A filter packed for [`Panels::run`], with its bias padded to whole panels.
#[derive(Debug, Clone)]
pub struct Panels {
    /// `[panel][depth][ROWS]`.
    weights: Vec<f32>,
    /// One per packed row.
    bias: Vec<f32>,
    /// Output channels.
    m: usize,
    /// Inner dimension.
    depth: usize,
}

/// Where one micro-kernel call reads and writes.
struct Tile {
    /// Output `(row 0, column 0)` of the tile.
    dst: *mut f32,
    /// The residual at the same place, if any (first depth block only).
    residual: Option<*const f32>,
    /// Distance between output rows (and residual rows).
    stride: usize,
    /// Valid rows (≤ [`ROWS`]).
    rows: usize,
    /// Valid columns of each register.
    masks: [__mmask16; VECTORS],
}

impl Panels {
    /// Packs a row-major `m × depth` filter and its `m` biases; `None` without AVX-512F (the
    /// caller keeps the `gemm` path).
    pub fn new(weight: &[f32], bias: &[f32]) -> Option<Self> {
        if !available() {
            return None;
        }
        let m = bias.len();
        let depth = weight.len() / m;
        let panels = m.div_ceil(ROWS);
        let mut weights = vec![0f32; panels * depth * ROWS];
        for (c, row) in weight.chunks_exact(depth).enumerate() {
            let panel = &mut weights[(c / ROWS) * depth * ROWS..][..depth * ROWS];
            for (k, &w) in row.iter().enumerate() {
                panel[k * ROWS + c % ROWS] = w;
            }
        }
        let mut padded = bias.to_vec();
        padded.resize(panels * ROWS, 0.0);
        Some(Self {
            weights,
            bias: padded,
            m,
            depth,
        })
    }

    /// `dst = act(W · cols + bias [+ residual])` for `n` output columns, as
    /// `DenseConv::gemm_columns` describes it. Work is split into column tiles (and channel
    /// ranges, when the tiles are too few to share out) across `parallelism`'s threads.
    ///
    /// # Safety
    /// `dst` must be valid for reads and writes of `m` rows of `n` samples spaced `stride`
    /// apart, and no other thread may touch those samples during the call.
    pub unsafe fn run(
        &self,
        cols: &[f32],
        (dst, n, stride): (*mut f32, usize, usize),
        residual: Option<&[f32]>,
        activation: Activation,
        parallelism: Parallelism,
    ) {
        assert!(cols.len() >= self.depth * n);
        if let Some(r) = residual {
            assert!(self.m == 0 || r.len() >= (self.m - 1) * stride + n);
        }
        let threads = match parallelism {
            Parallelism::None => 1,
            Parallelism::Rayon(0) => rayon::current_num_threads(),
            Parallelism::Rayon(t) => t,
        };
        let tiles = n.div_ceil(COLUMNS);
        let panels = self.m.div_ceil(ROWS);
        let ranges = if threads > 1 {
            (2 * threads).div_ceil(tiles).clamp(1, panels.max(1))
        } else {
            1
        };
        let per_range = panels.div_ceil(ranges);
        let out = SharedOut(dst);
        let item = |i: usize, buf: &mut Vec<f32>| {
            let (tile, range) = (i / ranges, i % ranges);
            let first = range * per_range;
            let last = (first + per_range).min(panels);
            // SAFETY: items write disjoint (column tile, panel range) blocks of `dst`, valid
            // by the caller's contract; `cols` and `residual` were checked above.
            unsafe {
                self.tile_column(
                    cols,
                    (out, n, stride),
                    residual,
                    activation,
                    (tile, first..last),
                    buf,
                )
            };
        };
        if threads > 1 && tiles * ranges > 1 {
            (0..tiles * ranges)
                .into_par_iter()
                .for_each_init(Vec::new, |buf, i| item(i, buf));
        } else {
            let mut buf = Vec::new();
            (0..tiles * ranges).for_each(|i| item(i, &mut buf));
        }
    }

    /// One column tile for the filter panels `panels`: per depth block, the tile's columns
    /// packed into `buf`, then every panel over them.
    ///
    /// # Safety
    /// As for [`Self::run`], with `cols` holding `depth × n` samples.
    unsafe fn tile_column(
        &self,
        cols: &[f32],
        (out, n, stride): (SharedOut, usize, usize),
        residual: Option<&[f32]>,
        activation: Activation,
        (tile, panels): (usize, std::ops::Range<usize>),
        buf: &mut Vec<f32>,
    ) {
        let col0 = tile * COLUMNS;
        let width = (n - col0).min(COLUMNS);
        let masks: [__mmask16; VECTORS] = std::array::from_fn(|v| {
            let valid = width.saturating_sub(16 * v).min(16);
            ((1u32 << valid) - 1) as __mmask16
        });
        let blocks = self.depth.div_ceil(MAX_DEPTH).max(1);
        let step = self.depth.div_ceil(blocks);
        buf.resize(step * COLUMNS, 0.0);
        for block in 0..blocks {
            let k0 = block * step;
            let k1 = (k0 + step).min(self.depth);
            for (k, dst) in (k0..k1).zip(buf.chunks_exact_mut(COLUMNS)) {
                dst[..width].copy_from_slice(&cols[k * n + col0..][..width]);
                dst[width..].fill(0.0);
            }
            for p in panels.clone() {
                let row0 = p * ROWS;
                let tile = Tile {
                    // SAFETY: row `row0` column `col0` is inside `dst` (the caller's contract).
                    dst: unsafe { out.ptr().add(row0 * stride + col0) },
                    residual: residual
                        .filter(|_| block == 0)
                        .map(|r| r[row0 * stride + col0..].as_ptr()),
                    stride,
                    rows: (self.m - row0).min(ROWS),
                    masks,
                };
                let weights = &self.weights[(p * self.depth + k0) * ROWS..][..(k1 - k0) * ROWS];
                let seed = (block == 0).then(|| &self.bias[row0..row0 + ROWS]);
                let activation = (block + 1 == blocks).then_some(activation);
                // SAFETY: the tile's rows and masked columns lie inside `dst`; `weights`
                // and `buf` hold `k1 - k0` steps.
                unsafe { micro_kernel(weights, buf, k1 - k0, &tile, seed, activation) };
            }
        }
    }
}

/// `ROWS × COLUMNS` sums over `depth` steps: seeded with `bias` (plus the tile's residual)
/// when given, else with what the tile holds (a later depth block); `activation` applied, when
/// given, before the masked store of the tile's valid rows and columns.
///
/// # Safety
/// The tile's valid rows and columns must be valid for reads and writes (and its residual for
/// reads); `weights` must hold `depth × ROWS` and `panel` `depth × COLUMNS` samples.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel(
    weights: &[f32],
    panel: &[f32],
    depth: usize,
    tile: &Tile,
    bias: Option<&[f32]>,
    activation: Option<Activation>,
) {
    debug_assert!(weights.len() >= depth * ROWS && panel.len() >= depth * COLUMNS);
    // Loops over constant bounds only, no closures and no raw pointer steps: a closure is not
    // compiled with this function's target features (so it is not inlined), and either that or
    // an index known only at run time puts the sums in memory instead of registers.
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; ROWS];
    for (r, acc) in acc.iter_mut().enumerate() {
        for (v, acc) in acc.iter_mut().enumerate() {
            if r >= tile.rows {
                continue;
            }
            let (m, at) = (tile.masks[v], r * tile.stride + 16 * v);
            // SAFETY: row `r` is valid; masked-off lanes are not read.
            *acc = unsafe {
                match (bias, tile.residual) {
                    (Some(b), Some(res)) => {
                        _mm512_add_ps(_mm512_set1_ps(b[r]), _mm512_maskz_loadu_ps(m, res.add(at)))
                    }
                    (Some(b), None) => _mm512_set1_ps(b[r]),
                    (None, _) => _mm512_maskz_loadu_ps(m, tile.dst.add(at)),
                }
            };
        }
    }
    let (weights, _) = weights.as_chunks::<ROWS>();
    let (panel, _) = panel.as_chunks::<COLUMNS>();
    for (w, p) in weights[..depth].iter().zip(&panel[..depth]) {
        let mut cols = [_mm512_setzero_ps(); VECTORS];
        for (v, c) in cols.iter_mut().enumerate() {
            // SAFETY: `p` holds `COLUMNS` = 16 · `VECTORS` samples.
            *c = unsafe { _mm512_loadu_ps(p[16 * v..].as_ptr()) };
        }
        for (acc, &w) in acc.iter_mut().zip(w) {
            let w = _mm512_set1_ps(w);
            for (a, &c) in acc.iter_mut().zip(&cols) {
                *a = _mm512_fmadd_ps(w, c, *a);
            }
        }
    }
    if let Some(activation) = activation {
        for a in acc.iter_mut().flatten() {
            *a = activation.apply_512(*a);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            if r < tile.rows {
                // SAFETY: row `r` is valid; masked-off lanes are not written.
                unsafe {
                    _mm512_mask_storeu_ps(tile.dst.add(r * tile.stride + 16 * v), tile.masks[v], a)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic pseudo-random sequence in [-1, 1).
    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn equals_the_plain_product_on_odd_shapes() {
        let Some(_) = Panels::new(&[1.0], &[0.0]) else {
            println!("no AVX-512F on this CPU: the panel kernel is never used here");
            return;
        };
        // (channels, depth, columns, row stride, residual, activation, threads): odd channel
        // counts, depths over one block, column tails, strided rows.
        let cases = [
            (8, 16, 48, 48, false, Activation::Identity, 1),
            (13, 7, 50, 61, true, Activation::Relu, 1),
            (3, 5, 17, 17, false, Activation::Relu6, 2),
            (70, 400, 101, 101, true, Activation::Leaky(0.1), 2),
            (16, 1000, 9, 20, false, Activation::Relu, 2),
            (128, 64, 300, 300, false, Activation::Relu6, 2),
        ];
        for (i, &(m, depth, n, stride, with_residual, activation, threads)) in
            cases.iter().enumerate()
        {
            let weight = noise(m * depth, 3 * i as u64);
            let bias = noise(m, 3 * i as u64 + 1);
            let cols = noise(depth * n, 3 * i as u64 + 2);
            let residual = with_residual.then(|| noise(m * stride, 7 + i as u64));
            let sentinel = 1234.5;
            let mut dst = vec![sentinel; m * stride];
            let panels = Panels::new(&weight, &bias).unwrap();
            let parallelism = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            // SAFETY: `dst` is `m` rows of `stride ≥ n` samples, owned here.
            unsafe {
                panels.run(
                    &cols,
                    (dst.as_mut_ptr(), n, stride),
                    residual.as_deref(),
                    activation,
                    parallelism,
                )
            };
            for c in 0..m {
                for j in 0..stride {
                    let got = dst[c * stride + j];
                    if j >= n {
                        assert_eq!(got, sentinel, "case {i}: wrote past row {c}'s columns");
                        continue;
                    }
                    let mut want = (0..depth)
                        .map(|k| f64::from(weight[c * depth + k]) * f64::from(cols[k * n + j]))
                        .sum::<f64>() as f32
                        + bias[c];
                    if let Some(r) = &residual {
                        want += r[c * stride + j];
                    }
                    let mut want = [want];
                    activation.apply(&mut want);
                    assert!(
                        (got - want[0]).abs() <= 1e-4 * (1.0 + want[0].abs()),
                        "case {i} ({m}×{depth}×{n}): [{c}, {j}] {got} vs {}",
                        want[0]
                    );
                }
            }
        }
    }
}
