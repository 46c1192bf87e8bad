//! The C ABI (`include/nhpatch.h`): load a denoiser or a descriptor from a
//! safetensors file, denoise or describe batches of u8 or f32 patches into
//! caller-provided buffers, read PNG strips, and read the last error.
//!
//! Contract of every `nhp_*` entry point:
//! - it never unwinds into C: the body runs under `catch_unwind`, and a panic
//!   becomes `NHP_ERR_PANIC` with the panic's message;
//! - a NULL pointer argument is `NHP_ERR_NULL`, never dereferenced;
//! - buffer lengths are passed in elements and checked against what the
//!   network needs before any access (`NHP_ERR_SHAPE` otherwise), so a wrong
//!   length is an error, never a read or write out of bounds;
//! - a failing call stores a message in a thread-local buffer owned by the
//!   library (`nhp_last_error`), so the caller frees nothing but networks
//!   (`nhp_free`) and strips (`nhp_free_patches`).
//!
//! A network is immutable once loaded (its pool aside, which sits behind a
//! lock), so one `nhp_network` may be used from several threads at once.

mod infer;
mod strip;

pub use infer::{nhp_denoise_f32, nhp_denoise_u8, nhp_describe_f32, nhp_describe_u8};
pub use strip::{nhp_free_patches, nhp_read_strip};

use crate::error::Error;
use crate::net::{LoadOptions, Network};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// `nhp_status` in C: what a call returns. The values are part of the ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NhpStatus {
    Ok = 0,
    /// A pointer argument was NULL.
    ErrNull = 1,
    /// An argument outside its domain: a network of the wrong kind for the call, a misaligned buffer.
    ErrInvalidArgument = 2,
    /// A buffer length that does not match the batch.
    ErrShape = 3,
    /// The operating system refused a file.
    ErrIo = 4,
    /// A file whose contents are not a valid weights file or PNG strip.
    ErrFormat = 5,
    /// A request this build or this machine cannot serve (e.g. a thread pool that cannot start).
    ErrUnsupported = 6,
    /// A bug inside nhpatch, caught before it reached the caller.
    ErrPanic = 7,
    /// An error the C API has no closer code for.
    ErrOther = 8,
}

impl NhpStatus {
    /// Every status, in value order.
    pub const ALL: [NhpStatus; 9] = [
        NhpStatus::Ok,
        NhpStatus::ErrNull,
        NhpStatus::ErrInvalidArgument,
        NhpStatus::ErrShape,
        NhpStatus::ErrIo,
        NhpStatus::ErrFormat,
        NhpStatus::ErrUnsupported,
        NhpStatus::ErrPanic,
        NhpStatus::ErrOther,
    ];

    /// The enumerator's name in `include/nhpatch.h`.
    pub fn c_name(self) -> &'static str {
        match self {
            NhpStatus::Ok => "NHP_OK",
            NhpStatus::ErrNull => "NHP_ERR_NULL",
            NhpStatus::ErrInvalidArgument => "NHP_ERR_INVALID_ARGUMENT",
            NhpStatus::ErrShape => "NHP_ERR_SHAPE",
            NhpStatus::ErrIo => "NHP_ERR_IO",
            NhpStatus::ErrFormat => "NHP_ERR_FORMAT",
            NhpStatus::ErrUnsupported => "NHP_ERR_UNSUPPORTED",
            NhpStatus::ErrPanic => "NHP_ERR_PANIC",
            NhpStatus::ErrOther => "NHP_ERR_OTHER",
        }
    }
}

/// `nhp_network` in C: a loaded network (which holds its own rayon pool
/// once `nhp_set_threads` gave it one; otherwise calls run on rayon's global pool).
pub struct NhpNetwork {
    net: Network,
}

/// Why a call failed: the status it returns and the message `nhp_last_error` gives.
struct Fail {
    status: NhpStatus,
    msg: String,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let status = match &e {
            Error::Shape(_) => NhpStatus::ErrShape,
            Error::InvalidArgument(_) => NhpStatus::ErrInvalidArgument,
            Error::Unsupported(_) => NhpStatus::ErrUnsupported,
            Error::Io { .. } => NhpStatus::ErrIo,
            Error::Format { .. } => NhpStatus::ErrFormat,
            Error::Training(_) => NhpStatus::ErrOther,
        };
        Fail { status, msg: e.to_string() }
    }
}

fn null_arg(name: &str) -> Fail {
    Fail { status: NhpStatus::ErrNull, msg: format!("argument '{name}' is NULL") }
}

fn fail(status: NhpStatus, msg: String) -> Fail {
    Fail { status, msg }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `msg` for `nhp_last_error`. Never panics: interior NULs become
/// spaces, and a thread that is shutting down simply keeps no message.
fn set_last_error(msg: &str) {
    let bytes: Vec<u8> = msg.bytes().map(|b| if b == 0 { b' ' } else { b }).collect();
    let msg = CString::new(bytes).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| e.try_borrow_mut().map(|mut e| *e = msg));
}

/// The text of a panic payload (`panic!` with a literal or a format string).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs an entry point's body: a panic or an error is recorded for
/// `nhp_last_error` and comes back as its status.
fn guard<T>(body: impl FnOnce() -> Result<T, Fail>) -> Result<T, NhpStatus> {
    let failure = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(f)) => f,
        Err(payload) => fail(NhpStatus::ErrPanic, format!("internal error in nhpatch: {}", panic_message(&*payload))),
    };
    set_last_error(&failure.msg);
    Err(failure.status)
}

/// `guard` for entry points that return a status.
fn status(body: impl FnOnce() -> Result<(), Fail>) -> NhpStatus {
    match guard(body) {
        Ok(()) => NhpStatus::Ok,
        Err(s) => s,
    }
}

/// A C string argument as a path (any bytes on Unix, UTF-8 elsewhere).
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid for the call.
unsafe fn path_arg(ptr: *const c_char, name: &str) -> Result<PathBuf, Fail> {
    if ptr.is_null() {
        return Err(null_arg(name));
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(ptr) };
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        let s = s.to_str().map_err(|_| fail(NhpStatus::ErrInvalidArgument, format!("'{name}' is not UTF-8")))?;
        Ok(PathBuf::from(s))
    }
}

/// A string argument: NULL is `NHP_ERR_NULL`, non-UTF-8 `NHP_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives the returned slice.
unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Fail> {
    if ptr.is_null() {
        return Err(null_arg(name));
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| fail(NhpStatus::ErrInvalidArgument, format!("'{name}' is not UTF-8")))
}

/// The network behind a handle.
///
/// # Safety
/// `net` is NULL or a handle from `nhp_load*` that has not been freed.
unsafe fn net_arg<'a>(net: *const NhpNetwork) -> Result<&'a NhpNetwork, Fail> {
    // SAFETY: the caller guarantees a live handle when non-NULL; handles are
    // only ever shared (`&`), so concurrent calls are sound (`Network: Sync`).
    unsafe { net.as_ref() }.ok_or_else(|| null_arg("net"))
}

type Loader = fn(&Path, LoadOptions) -> crate::Result<Network>;

/// Loads with `loader` into `*out` (NULL on failure).
///
/// # Safety
/// `path` as in `path_arg`; `out` is NULL or valid for a write of one pointer.
unsafe fn load_into(path: *const c_char, out: *mut *mut NhpNetwork, loader: Loader) -> NhpStatus {
    status(|| {
        if out.is_null() {
            return Err(null_arg("out"));
        }
        // SAFETY: `out` is non-NULL and the caller guarantees it is writable.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { path_arg(path, "path") }?;
        let net = loader(&path, LoadOptions::default())?;
        let handle = Box::new(NhpNetwork { net });
        // SAFETY: as above; ownership passes to the caller until `nhp_free`.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Loads any network; the file's metadata says which.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_load(path: *const c_char, out: *mut *mut NhpNetwork) -> NhpStatus {
    // SAFETY: this function's contract is `load_into`'s.
    unsafe { load_into(path, out, Network::load) }
}

/// Loads a denoiser (U-Net or DnCNN); a descriptor file is `NHP_ERR_FORMAT`.
///
/// # Safety
/// As `nhp_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_load_denoiser(path: *const c_char, out: *mut *mut NhpNetwork) -> NhpStatus {
    // SAFETY: this function's contract is `load_into`'s.
    unsafe { load_into(path, out, Network::load_denoiser) }
}

/// Loads a HardNet descriptor; a denoiser file is `NHP_ERR_FORMAT`.
///
/// # Safety
/// As `nhp_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_load_descriptor(path: *const c_char, out: *mut *mut NhpNetwork) -> NhpStatus {
    // SAFETY: this function's contract is `load_into`'s.
    unsafe { load_into(path, out, Network::load_descriptor) }
}

/// Frees a network (and its pool); NULL is a no-op.
///
/// # Safety
/// `net` is NULL or a handle from `nhp_load*`, not yet freed, that no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_free(net: *mut NhpNetwork) {
    let _ = guard(|| {
        if !net.is_null() {
            // SAFETY: the handle came from `Box::into_raw` in `load_into` and is freed once.
            drop(unsafe { Box::from_raw(net) });
        }
        Ok(())
    });
}

/// 1 for a denoiser, 0 for a descriptor, -1 (with a message) for NULL.
///
/// # Safety
/// `net` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_is_denoiser(net: *const NhpNetwork) -> c_int {
    // SAFETY: forwarded from this function's contract.
    guard(|| Ok(c_int::from(unsafe { net_arg(net) }?.net.arch().is_denoiser()))).unwrap_or(-1)
}

/// Values per patch a call writes: 1024 for a denoiser, 128 for a descriptor; 0 for NULL.
///
/// # Safety
/// `net` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_output_len(net: *const NhpNetwork) -> usize {
    // SAFETY: forwarded from this function's contract.
    guard(|| Ok(unsafe { net_arg(net) }?.net.model().out_len())).unwrap_or(0)
}

/// The architecture's name ("unet", "dncnn", "hardnet-baseline",
/// "hardnet-original"), static; "" for NULL.
///
/// # Safety
/// `net` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_arch_name(net: *const NhpNetwork) -> *const c_char {
    // SAFETY: forwarded from this function's contract.
    let name = guard(|| Ok(unsafe { net_arg(net) }?.net.arch().info().c_name));
    name.unwrap_or(c"").as_ptr()
}

/// Drops the inference workspaces the network keeps between calls (see
/// `Network::release_workspaces`); later calls make new ones.
///
/// # Safety
/// `net` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_release_workspaces(net: *mut NhpNetwork) -> NhpStatus {
    status(|| {
        // SAFETY: forwarded from this function's contract; only shared access is needed.
        let handle = unsafe { net_arg(net) }?;
        handle.net.release_workspaces();
        Ok(())
    })
}

/// Gives the network its own pool of `threads` workers (0: one per core).
/// Calls already running finish on the pool they started on.
///
/// # Safety
/// `net` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_set_threads(net: *mut NhpNetwork, threads: usize) -> NhpStatus {
    status(|| {
        // SAFETY: forwarded from this function's contract; only shared access is needed.
        let handle = unsafe { net_arg(net) }?;
        Ok(handle.net.set_threads(threads)?)
    })
}

/// Runs the network's inference on `device` ("cpu", "cuda" or "cuda:N") from
/// now on: weights uploaded once, patches in batches, outputs copied back.
///
/// # Safety
/// `net` is NULL or a live handle that no other thread uses during the call;
/// `device` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_set_device(net: *mut NhpNetwork, device: *const c_char) -> NhpStatus {
    status(|| {
        // SAFETY: forwarded from this function's contract (exclusive use during the call).
        let handle = unsafe { net.as_mut() }.ok_or_else(|| null_arg("net"))?;
        // SAFETY: forwarded from this function's contract.
        let name = unsafe { str_arg(device, "device") }?;
        handle.net.set_device(name.parse()?)?;
        Ok(())
    })
}

/// Runs the network's CPU inference in `precision` ("f32", "int8" or
/// "bf16") from now on (`net::use_precision`): int8 uses the calibration
/// stored in the weights file, or calibrates on the default sample when it
/// has none (a descriptor used after a denoiser is best calibrated with
/// `nhpatch calibrate --denoiser`); bf16 needs no calibration.
/// NHP_ERR_UNSUPPORTED on a device, NHP_ERR_INVALID_ARGUMENT for an unknown name.
///
/// # Safety
/// `net` is NULL or a live handle that no other thread uses during the call;
/// `precision` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nhp_set_precision(net: *mut NhpNetwork, precision: *const c_char) -> NhpStatus {
    status(|| {
        // SAFETY: forwarded from this function's contract (exclusive use during the call).
        let handle = unsafe { net.as_mut() }.ok_or_else(|| null_arg("net"))?;
        // SAFETY: forwarded from this function's contract.
        let name = unsafe { str_arg(precision, "precision") }?;
        crate::net::use_precision(&mut handle.net, name.parse()?, None)?;
        Ok(())
    })
}

/// The message of the last failing `nhp_*` call on this thread ("" if none
/// has failed). Owned by the library; valid until the next `nhp_*` call on
/// this thread. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn nhp_last_error() -> *const c_char {
    // The `CString` lives in the thread-local until a later failure replaces
    // it. Nothing here can panic; the guard keeps that true if it changes.
    let ptr = panic::catch_unwind(|| LAST_ERROR.try_with(|e| e.try_borrow().map(|e| e.as_ptr())));
    match ptr {
        Ok(Ok(Ok(p))) => p,
        _ => c"".as_ptr(),
    }
}

/// nhpatch's version, e.g. "0.1.0"; static.
#[unsafe(no_mangle)]
pub extern "C" fn nhp_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the package version contains a NUL"),
    };
    VERSION.as_ptr()
}

/// Handles are shared across threads: the network must be `Sync` and `Send`.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<NhpNetwork>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: never NULL, valid until the next call on this thread.
        unsafe { CStr::from_ptr(nhp_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let n = 7;
        assert_eq!(status(|| panic!("boom {n}")), NhpStatus::ErrPanic);
        assert_eq!(last_error(), "internal error in nhpatch: boom 7");
        assert_eq!(status(|| Ok(())), NhpStatus::Ok);
    }

    #[test]
    fn messages_with_nul_bytes_are_kept_whole() {
        assert_eq!(status(|| Err(fail(NhpStatus::ErrOther, "a\0b".into()))), NhpStatus::ErrOther);
        assert_eq!(last_error(), "a b");
    }
}
