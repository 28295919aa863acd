//! The calls into src/ffi/shrink_graph.cpp, on the `torch::jit::Module` behind a tch `CModule`.

use crate::error::{first_line, PruneError, Result};
use std::ffi::{c_char, c_void, CStr, CString};
use tch::{CModule, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn tp_shrink_describe(
        module: *mut c_void,
        input: *const C_tensor,
        error: *mut *mut c_char,
    ) -> *mut c_char;
    fn tp_shrink_get_tensor(
        module: *mut c_void,
        dotted: *const c_char,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn tp_shrink_set_tensor(
        module: *mut c_void,
        dotted: *const c_char,
        value: *const C_tensor,
        error: *mut *mut c_char,
    ) -> i32;
    fn tp_shrink_set_int(
        module: *mut c_void,
        path: *const c_char,
        name: *const c_char,
        value: i64,
        error: *mut *mut c_char,
    ) -> i32;
    fn tp_shrink_set_groups(
        module: *mut c_void,
        path: *const c_char,
        old_groups: i64,
        new_groups: i64,
        error: *mut *mut c_char,
    ) -> i64;
    fn tp_shrink_reset_plans(module: *mut c_void, error: *mut *mut c_char) -> i32;
    fn tp_free_string(s: *mut c_char);
}

/// The `torch::jit::Module*` that a `CModule` wraps. tch keeps it in a private field, and a
/// `CModule` is exactly that one pointer (checked below at compile time): the handle is read
/// from the struct's memory. The pointer stays owned by the `CModule`.
fn raw(module: &CModule) -> *mut c_void {
    const _: () = assert!(std::mem::size_of::<CModule>() == std::mem::size_of::<*mut c_void>());
    // SAFETY: `CModule` is a struct of one field, `c_module: *mut CModule_`, so its bytes are
    // the pointer; it is only read here.
    unsafe { *(module as *const CModule as *const *mut c_void) }
}

fn take(error: *mut c_char) -> PruneError {
    if error.is_null() {
        return PruneError::Shrink("libtorch failed without a message".into());
    }
    // SAFETY: the C++ side allocated a NUL-terminated copy with malloc.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { tp_free_string(error) };
    PruneError::torch(first_line(&message))
}

fn c(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| PruneError::InvalidArgument(format!("name with a NUL byte: {s:?}")))
}

/// The inlined, attribute-folded `forward` graph with the shape of every top-level tensor value
/// measured on `input` (the line format of src/ffi/shrink_graph.cpp).
pub(crate) fn describe(module: &CModule, input: &Tensor) -> Result<String> {
    let mut error = std::ptr::null_mut();
    // SAFETY: live module and tensor; the returned string is ours to free.
    let text = unsafe { tp_shrink_describe(raw(module), input.as_ptr(), &mut error) };
    if text.is_null() {
        return Err(take(error));
    }
    let out = unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    unsafe { tp_free_string(text) };
    Ok(out)
}

/// A parameter or buffer of the module by dotted name (the module's tensor itself).
pub(crate) fn get_tensor(module: &CModule, dotted: &str) -> Result<Tensor> {
    let name = c(dotted)?;
    let mut error = std::ptr::null_mut();
    // SAFETY: live module; the returned handle is a new tensor that the Tensor owns.
    let t = unsafe { tp_shrink_get_tensor(raw(module), name.as_ptr(), &mut error) };
    if t.is_null() {
        return Err(take(error));
    }
    Ok(unsafe { Tensor::from_ptr(t) })
}

/// Replaces a parameter or buffer of the module by `value`.
pub(crate) fn set_tensor(module: &CModule, dotted: &str, value: &Tensor) -> Result<()> {
    let name = c(dotted)?;
    let mut error = std::ptr::null_mut();
    // SAFETY: live module and tensor; the C++ side copies what it keeps.
    match unsafe { tp_shrink_set_tensor(raw(module), name.as_ptr(), value.as_ptr(), &mut error) } {
        0 => Ok(()),
        _ => Err(take(error)),
    }
}

/// How an int of a submodule was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntSlot {
    /// Neither an int attribute nor an int class constant of that name.
    Absent,
    /// An attribute of the instance.
    Attribute,
    /// A constant of the class, shared by every instance of it.
    ClassConstant,
}

pub(crate) fn set_int(module: &CModule, path: &str, name: &str, value: i64) -> Result<IntSlot> {
    let (p, n) = (c(path)?, c(name)?);
    let mut error = std::ptr::null_mut();
    // SAFETY: live module, NUL-terminated strings.
    match unsafe { tp_shrink_set_int(raw(module), p.as_ptr(), n.as_ptr(), value, &mut error) } {
        0 => Ok(IntSlot::Absent),
        1 => Ok(IntSlot::Attribute),
        2 => Ok(IntSlot::ClassConstant),
        _ => Err(take(error)),
    }
}

/// Rewrites the `groups` constant of the convolutions of the class of the submodule at `path`;
/// returns how many convolution calls changed.
pub(crate) fn set_groups(module: &CModule, path: &str, old: i64, new: i64) -> Result<i64> {
    let p = c(path)?;
    let mut error = std::ptr::null_mut();
    // SAFETY: live module, NUL-terminated string.
    let n = unsafe { tp_shrink_set_groups(raw(module), p.as_ptr(), old, new, &mut error) };
    if n < 0 {
        Err(take(error))
    } else {
        Ok(n)
    }
}

/// Drops the cached optimized graphs of every method, so that analysing the module again sees
/// the rewritten code.
pub(crate) fn reset_plans(module: &CModule) -> Result<()> {
    let mut error = std::ptr::null_mut();
    // SAFETY: live module.
    match unsafe { tp_shrink_reset_plans(raw(module), &mut error) } {
        0 => Ok(()),
        _ => Err(take(error)),
    }
}
