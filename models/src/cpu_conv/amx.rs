//! Intel AMX tile products for [`super::panel_gemm`]'s bf16 precision (Sapphire Rapids on):
//! one `tdpbf16ps` multiplies a 16 × 32 bf16 filter tile by a 32 × 16 column tile into 16 × 16
//! f32 sums, 16 times the multiply-adds of an AVX-512 `vdpbf16ps`.
//!
//! The micro-kernel keeps a [`ROWS`] × [`COLUMNS`] block of sums in three accumulator tiles
//! over the whole inner dimension: per 32 inner steps one filter tile and three column tiles
//! are loaded (the column tiles straight from the panel kernel's bf16 packing, whose rows are
//! already the pairs a column tile holds), and the sums are stored once to a scratch block for
//! the panel kernel's epilogue (bias, residual, activation, masked store).
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly; the CPU
//! is asked by CPUID and Linux grants the tile state to the process (`arch_prctl`) once.

use std::arch::asm;

/// Output channels per filter tile (the rows of an accumulator tile).
pub const ROWS: usize = 16;

/// Output columns per block: three accumulator tiles of 16, the panel kernel's column tile.
pub const COLUMNS: usize = 48;

/// Inner steps per tile (a 64-byte row of bf16).
pub const DEPTH: usize = 32;

/// 32-bit words (bf16 pairs) in one filter tile.
const TILE_WORDS: usize = ROWS * DEPTH / 2;

/// Whether this CPU and OS run AMX bf16 tiles (checked, and the tile state requested from the
/// kernel, once per process). `ROLLCALL_CPU_AMX=0` turns them off, leaving AVX512-BF16.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let disabled = std::env::var("ROLLCALL_CPU_AMX").is_ok_and(|v| v.trim() == "0");
        !disabled && cpu_has_amx_bf16() && os_grants_tiles()
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
fn cpu_has_amx_bf16() -> bool {
    if std::arch::x86_64::__cpuid(0).eax < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`), which a
/// process must hold before its first tile instruction.
#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the request takes two integers and changes only this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Elsewhere the tile state is not requested, so the tiles are not used.
#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// The 64-byte tile configuration `ldtilecfg` reads: palette 1, tiles 0–6 of 16 rows of 64
/// bytes (accumulators 0–2, filter 3, columns 4–6).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    const KERNEL: Self = Self {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
}

/// Tiles configured for [`block`] on this thread until dropped (which releases them, so that
/// context switches save no tile state). Not `Send`: the configuration is the thread's.
pub struct Tiles(std::marker::PhantomData<*const ()>);

impl Tiles {
    /// Configures this thread's tiles.
    ///
    /// # Safety
    /// [`available`] must have returned `true`.
    pub unsafe fn configure() -> Self {
        // SAFETY: the CPU has AMX and the process holds the tile state (the caller's
        // contract); the configuration is 64 valid bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &TileConfig::KERNEL, options(nostack, readonly)) };
        Self(std::marker::PhantomData)
    }

    /// `out = W · cols` for one filter panel and one column block over `blocks` tiles of
    /// [`DEPTH`] inner steps: `weights` as [`pack_weights`] laid out the panel, `cols` the
    /// panel kernel's bf16 rows of [`COLUMNS`] pairs (16 per tile), `out` [`ROWS`] rows of
    /// [`COLUMNS`] sums.
    pub fn block(&self, weights: &[u32], cols: &[u32], out: &mut [f32; ROWS * COLUMNS]) {
        let blocks = weights.len() / TILE_WORDS;
        assert!(cols.len() >= blocks * DEPTH / 2 * COLUMNS);
        // SAFETY: the tiles are configured on this thread (`self`); every tile load reads
        // 16 rows of 64 bytes inside `weights` (one tile per block) or `cols` (16 rows of
        // `COLUMNS` words per block, 64 bytes at word 0, 16 and 32), checked above, and the
        // stores write 16 rows of 64 bytes inside `out`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                options(nostack, nomem)
            );
            for b in 0..blocks {
                asm!(
                    "tileloadd tmm3, [{w} + {w_stride}*1]",
                    "tileloadd tmm4, [{c} + {c_stride}*1]",
                    "tileloadd tmm5, [{c} + {c_stride}*1 + 64]",
                    "tileloadd tmm6, [{c} + {c_stride}*1 + 128]",
                    "tdpbf16ps tmm0, tmm3, tmm4",
                    "tdpbf16ps tmm1, tmm3, tmm5",
                    "tdpbf16ps tmm2, tmm3, tmm6",
                    w = in(reg) weights.as_ptr().add(b * TILE_WORDS),
                    w_stride = in(reg) DEPTH * 2,
                    c = in(reg) cols.as_ptr().add(b * DEPTH / 2 * COLUMNS),
                    c_stride = in(reg) COLUMNS * 4,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{o} + {stride}*1], tmm0",
                "tilestored [{o} + {stride}*1 + 64], tmm1",
                "tilestored [{o} + {stride}*1 + 128], tmm2",
                o = in(reg) out.as_mut_ptr(),
                stride = in(reg) COLUMNS * 4,
                options(nostack),
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`; releasing them only resets them.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Packs a row-major `m × depth` filter, already rounded to bf16 (`bf16(c, k)`), as filter
/// tiles: `[panel of ROWS channels][block of DEPTH steps][ROWS][DEPTH / 2 pairs]`, the even
/// step in the low half, zero past `m` and `depth`.
pub fn pack_weights(m: usize, depth: usize, bf16: impl Fn(usize, usize) -> u16) -> Vec<u32> {
    let blocks = depth.div_ceil(DEPTH);
    let mut words = vec![0u32; m.div_ceil(ROWS) * blocks * TILE_WORDS];
    for c in 0..m {
        for k in 0..depth {
            let tile = (c / ROWS) * blocks + k / DEPTH;
            let at = tile * TILE_WORDS + (c % ROWS) * DEPTH / 2 + (k % DEPTH) / 2;
            words[at] |= u32::from(bf16(c, k)) << (16 * (k % 2));
        }
    }
    words
}
