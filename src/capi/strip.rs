//! PNG strips through the C ABI, so a C program needs no PNG decoder of its
//! own: `nhp_read_strip` reads a strip exactly as `nhpatch describe` does
//! (any depth or colour type to 8-bit gray, patches of any side resized to
//! 32x32) into a buffer the library allocates and `nhp_free_patches` frees.

use super::{NhpStatus, null_arg, path_arg, status};
use crate::io::png;
use crate::models::PATCH_LEN;
use std::ffi::c_char;

/// Reads the strip at `path` into `*patches` (`*n_patches x 1024` grey
/// levels, row-major; free with `nhp_free_patches(*patches, *n_patches)`).
/// On failure `*patches` is NULL and `*n_patches` 0.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `patches` and `n_patches` are
/// NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_read_strip(
    path: *const c_char,
    patches: *mut *mut u8,
    n_patches: *mut usize,
) -> NhpStatus {
    status(|| {
        if patches.is_null() {
            return Err(null_arg("patches"));
        }
        if n_patches.is_null() {
            return Err(null_arg("n_patches"));
        }
        // SAFETY: both are non-NULL and the caller guarantees they are writable.
        unsafe {
            patches.write(std::ptr::null_mut());
            n_patches.write(0);
        }
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { path_arg(path, "path") }?;
        let strip = png::read_strip(&path)?;
        debug_assert_eq!(strip.patches.len(), strip.count * PATCH_LEN);
        // A boxed slice has no spare capacity: `nhp_free_patches` rebuilds it from the count alone.
        let data = Box::into_raw(strip.patches.into_boxed_slice());
        // SAFETY: as above; ownership of the buffer passes to the caller.
        unsafe {
            patches.write(data.cast::<u8>());
            n_patches.write(strip.count);
        }
        Ok(())
    })
}

/// Frees a buffer from `nhp_read_strip`; NULL is a no-op.
///
/// # Safety
/// `patches` is NULL or a buffer `nhp_read_strip` returned and not yet freed,
/// with the `n_patches` it returned alongside.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_free_patches(patches: *mut u8, n_patches: usize) {
    let _ = status(|| {
        // A count whose size overflows cannot come from `nhp_read_strip`: leak rather than guess.
        if let (false, Some(len)) = (patches.is_null(), n_patches.checked_mul(PATCH_LEN)) {
            // SAFETY: the caller passes back the pointer and count of one
            // `Box<[u8]>` of `len` bytes made by `nhp_read_strip`, freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(patches, len)) });
        }
        Ok(())
    });
}
