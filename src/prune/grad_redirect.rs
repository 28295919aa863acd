//! The gradient route of a pruned tensor (src/ffi/grad_redirect.cpp): `orig` receives
//! `grad * mask`, and the tensor modules compute with receives nothing.

use crate::error::{PruneError, Result};
use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn tp_redirect_new(
        target: *const C_tensor,
        orig: *const C_tensor,
        mask: *const C_tensor,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn tp_redirect_refresh(handle: *mut c_void, error: *mut *mut c_char) -> i32;
    fn tp_redirect_deliveries(handle: *const c_void) -> u64;
    fn tp_redirect_mark_placed(handle: *mut c_void);
    fn tp_redirect_moved(handle: *const c_void) -> i32;
    fn tp_redirect_free(handle: *mut c_void);
    fn tp_free_error(error: *mut c_char);
}

/// Owns the hook; dropping it removes the hook.
#[derive(Debug)]
pub(crate) struct GradRedirect(NonNull<c_void>);

// SAFETY: the handle is only used through &mut self or dropped, and libtorch's tensors and
// autograd nodes it refers to are themselves thread-safe.
unsafe impl Send for GradRedirect {}
unsafe impl Sync for GradRedirect {}

impl GradRedirect {
    /// Installs the hook on `target`'s gradient accumulator (`target` must be a leaf).
    pub(crate) fn new(target: &Tensor, orig: &Tensor, mask: &Tensor) -> Result<Self> {
        let mut error = std::ptr::null_mut();
        // SAFETY: the three pointers are live tensors; the C++ side copies the handles.
        let handle =
            unsafe { tp_redirect_new(target.as_ptr(), orig.as_ptr(), mask.as_ptr(), &mut error) };
        NonNull::new(handle)
            .map(Self)
            .ok_or_else(|| take_error(error))
    }

    /// Moves the hook to the tensor's current accumulator if libtorch replaced it (after a
    /// `set_data` that changed its dtype or device: the registry following a store moved by
    /// `VarStore::set_device` or `set_kind`).
    pub(crate) fn refresh(&mut self) -> Result<()> {
        let mut error = std::ptr::null_mut();
        // SAFETY: the handle is live until drop.
        match unsafe { tp_redirect_refresh(self.0.as_ptr(), &mut error) } {
            0 => Ok(()),
            _ => Err(take_error(error)),
        }
    }

    /// How many gradients `orig` has received through the hook so far.
    pub(crate) fn deliveries(&self) -> u64 {
        // SAFETY: the handle is live until drop.
        unsafe { tp_redirect_deliveries(self.0.as_ptr()) }
    }
}

impl GradRedirect {
    /// Records the storages `orig` and the mask have now (after `target` was written from them).
    pub(crate) fn mark_placed(&mut self) {
        // SAFETY: the handle is live until drop.
        unsafe { tp_redirect_mark_placed(self.0.as_ptr()) }
    }

    /// Whether `orig` or the mask got another storage since [`GradRedirect::mark_placed`]
    /// (`set_data`: a store moved to another device or dtype, even and back again). Reliable
    /// where comparing data addresses is not: the allocator may hand the same address out again.
    pub(crate) fn moved(&self) -> bool {
        // SAFETY: the handle is live until drop.
        unsafe { tp_redirect_moved(self.0.as_ptr()) != 0 }
    }
}

impl Drop for GradRedirect {
    fn drop(&mut self) {
        // SAFETY: created by tp_redirect_new, freed once.
        unsafe { tp_redirect_free(self.0.as_ptr()) }
    }
}

fn take_error(error: *mut c_char) -> PruneError {
    if error.is_null() {
        return PruneError::torch("out of memory");
    }
    // SAFETY: a NUL-terminated string allocated by the C++ side, freed here once.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { tp_free_error(error) };
    PruneError::torch(crate::error::first_line(&message))
}
