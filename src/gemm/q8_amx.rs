//! AMX tiles of the int8 GEMM (`q8`): Intel's tile registers and `tdpbsud`.
//!
//! Contract: `q8::run_amx` drives these; each call computes blocks of up
//! to 64 rows x 16 columns of the exact sums `acc = qa * qb` (the same i32
//! sums as every other int8 kernel, so the same output bits).
//!
//! Tiles (one configuration for a whole GEMM call, every tile full size):
//! - C: `tmm0 .. tmm3`, 16 rows (weights rows i) x 16 i32 (columns j).
//! - B: `tmm4`, 16 rows (depth steps s) x 64 bytes: the step layout of the
//!   packed B itself (`q8` header: 16 columns x 4 depths), so a chunk of 16
//!   consecutive steps is one tile at a stride of 64 bytes.
//! - A: `tmm5 .. tmm7`, 16 rows x 64 bytes: 64 consecutive depths of 16
//!   weight rows, read in place at the weights' row stride (`Q8Weights`
//!   pads each row to 64 bytes and the rows to 16 with zeros, so every tile
//!   lies inside them and the padding adds 0).
//!
//! `tdpbsud C, A, B`: `C[i, j] += sum_{t < 16, u < 4} A[i, 4t + u] * B[t, 4j + u]`
//! with A signed and B unsigned bytes, the identity `vpdpbusd` computes
//! for one row at a time: 16 x 16 x 64 products per instruction.
//!
//! Linux hands out the tile registers only to a process that asks for
//! them (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); `available`
//! asks once and says no when the CPU or the kernel refuses, so a CPU
//! without AMX never meets these instructions.

use super::q8::PANEL;
use std::arch::asm;
use std::sync::OnceLock;

/// Depth steps (4 depths each) of one tile of A and B.
pub(crate) const CHUNK_STEPS: usize = 16;
/// Rows of one C tile.
pub(crate) const TILE_ROWS: usize = 16;
/// Rows of C one block computes: four C tiles.
pub(crate) const BLOCK_ROWS: usize = 4 * TILE_ROWS;

/// One B tile: `CHUNK_STEPS` steps of 64 bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Chunk(pub [[u8; 4 * PANEL]; CHUNK_STEPS]);

/// A block of C: up to four tiles of 16 rows.
#[repr(C, align(64))]
pub(crate) struct Block(pub [[i32; PANEL]; BLOCK_ROWS]);

/// Whether this CPU has AMX tiles with int8 products, AVX-512 (F, BW) for
/// the stores, and the OS lets this process use the tiles; asked once.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && cpu_has_amx_int8() && os_grants_tiles()
    })
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (EDX bit 25).
fn cpu_has_amx_int8() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

/// Asks Linux for the tile data state; true when granted.
#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with two integer arguments; it
    // reads and writes no memory of ours. The kernel clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Other systems: no known way to ask, so no tiles.
#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// The tile configuration of a GEMM call, loaded by `configure` and
/// released when dropped. Its methods run the tile instructions.
pub(crate) struct Tiles(());

impl Tiles {
    /// Loads the configuration: palette 1, tiles 0 to 7 of 16 rows x 64 bytes.
    ///
    /// # Safety
    /// `available()` is true.
    pub(crate) unsafe fn configure() -> Tiles {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            // Bytes per row (u16 at 16 + 2t) and rows (u8 at 48 + t) of tile t.
            cfg.0[16 + 2 * t] = 64;
            cfg.0[48 + t] = TILE_ROWS as u8;
        }
        // SAFETY: the caller's contract; 64 readable bytes of a valid configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        Tiles(())
    }

    /// C tiles 0 .. `tiles` (1 to 4) set to zero.
    #[inline(always)]
    pub(crate) fn zero(&self, tiles: usize) {
        // SAFETY: the tiles are configured (`self` exists); no memory is touched.
        unsafe {
            match tiles {
                1 => asm!("tilezero tmm0", options(nomem, nostack)),
                2 => asm!("tilezero tmm0", "tilezero tmm1", options(nomem, nostack)),
                3 => asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", options(nomem, nostack)),
                _ => asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nomem, nostack)),
            }
        }
    }

    /// `C_t += A_t * B` for C tiles t < `tiles` (1 to 4), where `A_t` is the
    /// 16 rows x 64 bytes at `a + 16 t lda` (row stride `lda`) and B the 16
    /// rows x 64 bytes at `b.0`, `b.1` apart.
    /// The A tiles rotate through tmm5 .. tmm7 so consecutive loads do not
    /// wait on one register.
    ///
    /// # Safety
    /// `16 tiles` rows of 64 readable bytes at `a`, `lda` apart; 16 at `b.0`, `b.1` apart.
    #[inline(always)]
    pub(crate) unsafe fn dot(&self, tiles: usize, a: *const i8, lda: usize, (b, bs): (*const u8, usize)) {
        let at = |t: usize| a.wrapping_add(TILE_ROWS * lda * t.min(tiles - 1));
        let (a0, a1, a2, a3) = (at(0), at(1), at(2), at(3));
        // SAFETY: the caller's contract.
        unsafe {
            match tiles {
                1 => asm!(
                    "tileloadd tmm4, [{b} + {s}*1]",
                    "tileloadd tmm5, [{a0} + {lda}*1]",
                    "tdpbsud tmm0, tmm5, tmm4",
                    b = in(reg) b, s = in(reg) bs, a0 = in(reg) a0, lda = in(reg) lda,
                    options(nostack, readonly),
                ),
                2 => asm!(
                    "tileloadd tmm4, [{b} + {s}*1]",
                    "tileloadd tmm5, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{a1} + {lda}*1]",
                    "tdpbsud tmm0, tmm5, tmm4",
                    "tdpbsud tmm1, tmm6, tmm4",
                    b = in(reg) b, s = in(reg) bs, a0 = in(reg) a0, a1 = in(reg) a1,
                    lda = in(reg) lda, options(nostack, readonly),
                ),
                3 => asm!(
                    "tileloadd tmm4, [{b} + {s}*1]",
                    "tileloadd tmm5, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{a1} + {lda}*1]",
                    "tileloadd tmm7, [{a2} + {lda}*1]",
                    "tdpbsud tmm0, tmm5, tmm4",
                    "tdpbsud tmm1, tmm6, tmm4",
                    "tdpbsud tmm2, tmm7, tmm4",
                    b = in(reg) b, s = in(reg) bs, a0 = in(reg) a0, a1 = in(reg) a1,
                    a2 = in(reg) a2, lda = in(reg) lda, options(nostack, readonly),
                ),
                _ => asm!(
                    "tileloadd tmm4, [{b} + {s}*1]",
                    "tileloadd tmm5, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{a1} + {lda}*1]",
                    "tdpbsud tmm0, tmm5, tmm4",
                    "tileloadd tmm7, [{a2} + {lda}*1]",
                    "tdpbsud tmm1, tmm6, tmm4",
                    "tileloadd tmm5, [{a3} + {lda}*1]",
                    "tdpbsud tmm2, tmm7, tmm4",
                    "tdpbsud tmm3, tmm5, tmm4",
                    b = in(reg) b, s = in(reg) bs, a0 = in(reg) a0, a1 = in(reg) a1,
                    a2 = in(reg) a2, a3 = in(reg) a3, lda = in(reg) lda, options(nostack, readonly),
                ),
            }
        }
    }

    /// C tiles t < `tiles` (1 to 4) into rows `16 t .. 16 t + 16` of `dst`.
    #[inline(always)]
    pub(crate) fn store(&self, tiles: usize, dst: &mut Block) {
        let p = dst.0.as_mut_ptr().cast::<u8>();
        let row = 4 * PANEL;
        let at = |t: usize| p.wrapping_add(TILE_ROWS * row * t.min(tiles - 1));
        // SAFETY: tile t's 16 rows of 64 bytes are rows 16 t .. 16 t + 16 of
        // `dst` (t < tiles <= 4), each 64 bytes.
        unsafe {
            match tiles {
                1 => asm!("tilestored [{c0} + {s}*1], tmm0", c0 = in(reg) at(0), s = in(reg) row, options(nostack)),
                2 => asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    c0 = in(reg) at(0), c1 = in(reg) at(1), s = in(reg) row, options(nostack),
                ),
                3 => asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c2} + {s}*1], tmm2",
                    c0 = in(reg) at(0), c1 = in(reg) at(1), c2 = in(reg) at(2), s = in(reg) row, options(nostack),
                ),
                _ => asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c2} + {s}*1], tmm2",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c0 = in(reg) at(0), c1 = in(reg) at(1), c2 = in(reg) at(2), c3 = in(reg) at(3),
                    s = in(reg) row, options(nostack),
                ),
            }
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`; releasing them
        // returns the thread to the initial tile state.
        unsafe { asm!("tilerelease", options(nomem, nostack)) };
    }
}
