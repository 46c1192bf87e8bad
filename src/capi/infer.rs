//! `nhp_denoise_*` and `nhp_describe_*`: a batch of `n_patches` 32x32
//! patches (row-major, grey levels 0..255, as u8 or f32) in, `n_patches x
//! nhp_output_len(net)` values out, into the caller's buffer.
//!
//! Everything is checked before the buffers are touched: the handle and both
//! pointers non-NULL, the network of the right kind for the call, both
//! pointers aligned for their type, `out_len` exactly `n_patches x
//! nhp_output_len(net)`. The input is read in full before the output is
//! written, so `out` may be the same buffer as `patches` (an in-place denoise).

use super::{Fail, NhpNetwork, NhpStatus, fail, net_arg, null_arg, status};
use crate::models::PATCH_LEN;
use crate::net::{Outputs, Patches};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Task {
    Denoise,
    Describe,
}

/// The handle and the number of input elements, once every argument checks out.
///
/// # Safety
/// `net` is NULL or a live handle.
unsafe fn check<'a, I, O>(
    net: *const NhpNetwork,
    patches: *const I,
    n_patches: usize,
    out: *mut O,
    out_len: usize,
    task: Task,
) -> Result<(&'a NhpNetwork, usize), Fail> {
    // SAFETY: forwarded from this function's contract.
    let handle = unsafe { net_arg(net) }?;
    if patches.is_null() {
        return Err(null_arg("patches"));
    }
    if out.is_null() {
        return Err(null_arg("out"));
    }
    let arch = handle.net.arch();
    let wrong_kind = match task {
        Task::Denoise => (!arch.is_denoiser()).then_some("a descriptor: call nhp_describe_*, not nhp_denoise_*"),
        Task::Describe => arch.is_denoiser().then_some("a denoiser: call nhp_denoise_*, not nhp_describe_*"),
    };
    if let Some(what) = wrong_kind {
        return Err(fail(NhpStatus::ErrInvalidArgument, format!("the network is {arch}, {what}")));
    }
    if !patches.is_aligned() || !out.is_aligned() {
        return Err(fail(NhpStatus::ErrInvalidArgument, "patches or out is not aligned for its element type".into()));
    }
    let per_patch = handle.net.model().out_len();
    // A slice may span at most isize::MAX bytes; a batch beyond that cannot be a real buffer.
    let max_bytes = isize::MAX as usize;
    let lens = n_patches.checked_mul(PATCH_LEN).zip(n_patches.checked_mul(per_patch)).filter(|&(i, o)| {
        i.checked_mul(size_of::<I>()).is_some_and(|b| b <= max_bytes)
            && o.checked_mul(size_of::<O>()).is_some_and(|b| b <= max_bytes)
    });
    let Some((in_len, want)) = lens else {
        return Err(fail(NhpStatus::ErrShape, format!("n_patches = {n_patches} is larger than any buffer can be")));
    };
    if out_len != want {
        return Err(fail(
            NhpStatus::ErrShape,
            format!("out_len is {out_len} elements; {n_patches} patches need {want} ({per_patch} per patch)"),
        ));
    }
    Ok((handle, in_len))
}

/// Checks the arguments and runs the network from `patches` straight into
/// `out` (`Network::forward_into`: nothing allocated once the network's
/// workspaces exist), except when the two buffers overlap (an in-place
/// denoise), where the input is copied first.
///
/// # Safety
/// `net` is NULL or a live handle; `patches` is NULL or readable for
/// `n_patches x 1024` elements; `out` is NULL or writable for `out_len`
/// elements; neither buffer is written by another thread during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn infer<I: Copy, O>(
    net: *const NhpNetwork,
    patches: *const I,
    n_patches: usize,
    out: *mut O,
    out_len: usize,
    task: Task,
    input: fn(&[I]) -> Patches<'_>,
    output: fn(&mut [O]) -> Outputs<'_>,
) -> NhpStatus {
    status(|| {
        // SAFETY: forwarded from this function's contract.
        let (handle, in_len) = unsafe { check(net, patches, n_patches, out, out_len, task) }?;
        let (in_bytes, out_bytes) = (in_len * size_of::<I>(), out_len * size_of::<O>());
        let (a, b) = (patches as usize, out as usize);
        let overlap = a < b + out_bytes && b < a + in_bytes;
        // SAFETY: `patches` is non-NULL and aligned (checked), `in_len`
        // elements fit in isize::MAX bytes (checked) and the caller
        // guarantees they are readable. When the buffers overlap, the slice
        // is copied and dead before `out` is borrowed, so no live `&mut`
        // aliases it.
        let copy: Vec<I>;
        let x = if overlap {
            copy = unsafe { std::slice::from_raw_parts(patches, in_len) }.to_vec();
            &copy[..]
        } else {
            unsafe { std::slice::from_raw_parts(patches, in_len) }
        };
        // SAFETY: `out` is non-NULL and aligned, `out_len` elements fit in
        // isize::MAX bytes (checked) and the caller guarantees they are
        // writable; it does not overlap `x` (copied above if it did).
        let out = unsafe { std::slice::from_raw_parts_mut(out, out_len) };
        match task {
            Task::Denoise => handle.net.denoise_into(input(x), output(out))?,
            Task::Describe => handle.net.forward_into(input(x), output(out))?,
        }
        Ok(())
    })
}

fn f32_in(x: &[f32]) -> Patches<'_> {
    Patches::F32(x)
}

fn u8_in(x: &[u8]) -> Patches<'_> {
    Patches::U8(x)
}

fn f32_out(o: &mut [f32]) -> Outputs<'_> {
    Outputs::F32(o)
}

/// Clipped to 0..255 and rounded, as `to_pixels` does.
fn u8_out(o: &mut [u8]) -> Outputs<'_> {
    Outputs::U8(o)
}

/// Denoises f32 patches into `out` (`n_patches x 1024` floats).
///
/// # Safety
/// See `infer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_denoise_f32(
    net: *const NhpNetwork,
    patches: *const f32,
    n_patches: usize,
    out: *mut f32,
    out_len: usize,
) -> NhpStatus {
    // SAFETY: this function's contract is `infer`'s.
    unsafe { infer(net, patches, n_patches, out, out_len, Task::Denoise, f32_in, f32_out) }
}

/// Denoises u8 patches into `out` (`n_patches x 1024` grey levels, clipped and rounded).
///
/// # Safety
/// See `infer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_denoise_u8(
    net: *const NhpNetwork,
    patches: *const u8,
    n_patches: usize,
    out: *mut u8,
    out_len: usize,
) -> NhpStatus {
    // SAFETY: this function's contract is `infer`'s.
    unsafe { infer(net, patches, n_patches, out, out_len, Task::Denoise, u8_in, u8_out) }
}

/// Describes f32 patches into `out` (`n_patches x 128` floats).
///
/// # Safety
/// See `infer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_describe_f32(
    net: *const NhpNetwork,
    patches: *const f32,
    n_patches: usize,
    out: *mut f32,
    out_len: usize,
) -> NhpStatus {
    // SAFETY: this function's contract is `infer`'s.
    unsafe { infer(net, patches, n_patches, out, out_len, Task::Describe, f32_in, f32_out) }
}

/// Describes u8 patches into `out` (`n_patches x 128` floats).
///
/// # Safety
/// See `infer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_describe_u8(
    net: *const NhpNetwork,
    patches: *const u8,
    n_patches: usize,
    out: *mut f32,
    out_len: usize,
) -> NhpStatus {
    // SAFETY: this function's contract is `infer`'s.
    unsafe { infer(net, patches, n_patches, out, out_len, Task::Describe, u8_in, f32_out) }
}
