//! The boundary with C++, in one place: every `extern` declaration of the crate's C++ (this
//! folder's `.cpp` files, declared in `tch_prune.h` in the same order), the one conversion of its
//! error convention into a `Result`, the one read of the raw pointer inside tch's `CModule`, and
//! a safe wrapper for each call. No other module of the crate holds an `extern` block.
//!
//! The convention (`tch_prune.h`): a C++ function that can fail returns a `char*`, null when it
//! succeeded, else the message of what failed, which [`check`] reads and frees; its results come
//! through out-parameters, written only on success. No exception crosses the boundary. Every
//! string the C++ side hands over, results and messages alike, is freed with `tp_free_string`
//! ([`take_string`]).
//!
//! The calls, by C++ file: `backend.cpp` (what libtorch has of CUDA, for
//! [`Backend`](crate::backend::Backend)), `script_save.cpp` (a TorchScript module saved with its
//! tensors on a chosen device), `grad_redirect.cpp` ([`GradRedirect`], the gradient hook of a
//! pruned tensor) and `shrink_graph.cpp` (a TorchScript graph described and rewritten for channel
//! removal; the description's line format is written down in `model/shrink/graph.rs`) and
//! `calibration_graph.cpp` ([`CalibrationProbe`], a forward that also returns the inputs of
//! linear layers, for calibrated pruning). The
//! loader calls of the backend report (`dlopen`) are here too, so that the callers hold no
//! `unsafe` code.

use crate::error::{first_line, PruneError};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::{PhantomData, PhantomPinned};
use std::ptr::{self, NonNull};
use tch::{CModule, Tensor};
use torch_sys::{CModule_, C_tensor};

/// `TpGroup` of tch_prune.h: a process group only the C++ side looks into.
#[repr(C)]
struct TpGroup {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

/// `TpRedirect` of tch_prune.h: a handle only the C++ side looks into.
#[repr(C)]
struct TpRedirect {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

/// `TpCalibrationProbe` of tch_prune.h: a handle only the C++ side looks into.
#[repr(C)]
struct TpCalibrationProbe {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

extern "C" {
    // tch_prune.cpp
    fn tp_free_string(s: *mut c_char);

    // backend.cpp
    fn tp_libtorch_version() -> *const c_char;
    fn tp_cudart_version() -> i64;
    fn tp_cudnn_version() -> i64;
    fn tp_cuda_device_count(count: *mut i64, why: *mut *mut c_char) -> *mut c_char;

    // script_save.cpp
    fn tp_module_save(
        module: *const CModule_,
        path: *const c_char,
        device: c_int,
        always_copy: c_int,
    ) -> *mut c_char;

    // grad_redirect.cpp
    fn tp_redirect_new(
        target: *const C_tensor,
        orig: *const C_tensor,
        mask: *const C_tensor,
        redirect: *mut *mut TpRedirect,
    ) -> *mut c_char;
    fn tp_redirect_refresh(redirect: *mut TpRedirect) -> *mut c_char;
    fn tp_redirect_deliveries(redirect: *const TpRedirect) -> u64;
    fn tp_redirect_mark_placed(redirect: *mut TpRedirect);
    fn tp_redirect_moved(redirect: *const TpRedirect) -> c_int;
    fn tp_redirect_free(redirect: *mut TpRedirect);

    // shrink_graph.cpp
    fn tp_shrink_describe(
        module: *mut CModule_,
        input: *const C_tensor,
        text: *mut *mut c_char,
    ) -> *mut c_char;
    fn tp_shrink_get_tensor(
        module: *mut CModule_,
        dotted: *const c_char,
        tensor: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn tp_shrink_set_tensor(
        module: *mut CModule_,
        dotted: *const c_char,
        value: *const C_tensor,
    ) -> *mut c_char;
    fn tp_shrink_set_int(
        module: *mut CModule_,
        path: *const c_char,
        name: *const c_char,
        value: i64,
        slot: *mut c_int,
    ) -> *mut c_char;
    fn tp_shrink_set_groups(
        module: *mut CModule_,
        path: *const c_char,
        old_groups: i64,
        new_groups: i64,
        changed: *mut i64,
    ) -> *mut c_char;
    fn tp_shrink_reset_plans(module: *mut CModule_) -> *mut c_char;

    // calibration_graph.cpp
    fn tp_calibration_probe_new(
        module: *mut CModule_,
        names: *const c_char,
        probe: *mut *mut TpCalibrationProbe,
        taps: *mut *mut c_char,
    ) -> *mut c_char;
    fn tp_calibration_probe_run(
        probe: *const TpCalibrationProbe,
        module: *mut CModule_,
        inputs: *const *const C_tensor,
        count: usize,
        taps: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn tp_calibration_probe_free(probe: *mut TpCalibrationProbe);

    // op_call.cpp
    fn tp_op_call(
        name: *const c_char,
        overload: *const c_char,
        args: *const TpOpArg,
        count: usize,
        outputs: *mut *mut *mut C_tensor,
        outputs_count: *mut usize,
    ) -> *mut c_char;

    // distributed.cpp
    fn tp_group_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world_size: c_int,
        host_store: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        interfaces: *const c_char,
        group: *mut *mut TpGroup,
    ) -> *mut c_char;
    fn tp_group_use_nccl(group: *mut TpGroup, factory: *mut c_void) -> *mut c_char;
    fn tp_group_all_reduce(
        group: *mut TpGroup,
        tensor: *const C_tensor,
        op: c_int,
        nccl: c_int,
    ) -> *mut c_char;
    fn tp_group_broadcast(
        group: *mut TpGroup,
        tensor: *const C_tensor,
        root: c_int,
        nccl: c_int,
    ) -> *mut c_char;
    fn tp_group_all_gather(
        group: *mut TpGroup,
        tensor: *const C_tensor,
        nccl: c_int,
        gathered: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn tp_group_barrier(group: *mut TpGroup) -> *mut c_char;
    fn tp_group_abort(group: *mut TpGroup);
    fn tp_group_store_set(
        group: *mut TpGroup,
        key: *const c_char,
        value: *const c_char,
        len: usize,
    ) -> *mut c_char;
    fn tp_group_store_check(
        group: *mut TpGroup,
        key: *const c_char,
        present: *mut c_int,
    ) -> *mut c_char;
    fn tp_group_store_get(
        group: *mut TpGroup,
        key: *const c_char,
        value: *mut *mut c_char,
    ) -> *mut c_char;
    fn tp_group_free(group: *mut TpGroup);
}

/// What failed at the boundary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FfiError {
    /// The C++ side threw: the first line of its message (libtorch's carry a C++ backtrace).
    #[error("{0}")]
    Cpp(String),
    /// A name or path holding a NUL byte, which a C string cannot carry.
    #[error("name with a NUL byte: {0:?}")]
    Nul(String),
}

impl From<FfiError> for PruneError {
    fn from(error: FfiError) -> Self {
        match error {
            FfiError::Cpp(message) => PruneError::torch(message),
            nul @ FfiError::Nul(_) => PruneError::InvalidArgument(nul.to_string()),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, FfiError>;

/// The error convention of tch_prune.h: `Ok` for null, else the message, freed.
///
/// # Safety
/// `error` is what a `tp_*` function of that convention returned.
unsafe fn check(error: *mut c_char) -> Result<()> {
    match NonNull::new(error) {
        None => Ok(()),
        Some(message) => Err(FfiError::Cpp(first_line(&take_string(message)))),
    }
}

/// A string the C++ side handed over, read (lossily where it is not UTF-8) and freed.
///
/// # Safety
/// `s` was made by the C++ side's `tp::copy_string` (or is its static out-of-memory message)
/// and is not used again.
unsafe fn take_string(s: NonNull<c_char>) -> String {
    let text = CStr::from_ptr(s.as_ptr()).to_string_lossy().into_owned();
    tp_free_string(s.as_ptr());
    text
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| FfiError::Nul(s.to_string()))
}

/// The `torch::jit::Module*` inside tch's `CModule`: the crate's one access to it. tch 0.26
/// keeps it in a private field and has no accessor; a `CModule` is that one field
/// (`c_module: *mut CModule_`), so its bytes are the pointer. The assertion stops the build
/// should a tch release change the struct's size or alignment. The pointer is read, not taken
/// over: the `CModule` keeps owning the module.
///
/// The C++ calls that rewrite the module do so through a shared reference, as tch's own
/// `forward` runs it through `&self`: the `torch::jit::Module` has its own reference-counted
/// object behind the pointer, and the crate only rewrites modules it holds alone (`shrink`).
fn module_ptr(module: &CModule) -> *mut CModule_ {
    const _: () = assert!(
        std::mem::size_of::<CModule>() == std::mem::size_of::<*mut CModule_>()
            && std::mem::align_of::<CModule>() == std::mem::align_of::<*mut CModule_>()
    );
    // SAFETY: see above; a `&CModule` is valid for reads of its size.
    unsafe { *(module as *const CModule).cast::<*mut CModule_>() }
}

// ---------------------------------------------------------------------------------------------
// backend.cpp, and the loader

/// The libtorch version of the headers this crate was compiled against, e.g. `2.13.0`.
pub(crate) fn libtorch_version() -> String {
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(tp_libtorch_version()) }
        .to_string_lossy()
        .into_owned()
}

/// The CUDA runtime version libtorch's CUDA part was built with; `None` when that part is not
/// loaded in this process.
pub(crate) fn cudart_version() -> Option<i64> {
    // SAFETY: no arguments; the C++ side catches every exception.
    let version = unsafe { tp_cudart_version() };
    (version >= 0).then_some(version)
}

/// The cuDNN version libtorch's CUDA part was built with; `None` without one.
pub(crate) fn cudnn_version() -> Option<i64> {
    // SAFETY: as above.
    let version = unsafe { tp_cudnn_version() };
    (version >= 0).then_some(version)
}

/// The number of CUDA devices, and what libtorch said while counting them (its warning on the
/// first count in a process, e.g. "Found no NVIDIA driver on your system"; empty when it said
/// nothing).
pub(crate) fn cuda_device_count() -> (i64, String) {
    let (mut count, mut why) = (0, ptr::null_mut());
    // SAFETY: two writable out-parameters; `why` is ours to free when set.
    match unsafe { check(tp_cuda_device_count(&mut count, &mut why)) } {
        Ok(()) => {
            let why = NonNull::new(why).map(|s| unsafe { take_string(s) });
            (count, why.unwrap_or_default().trim().to_string())
        }
        // Only memory can run out here: then the count is unknown, and that is the reason.
        Err(FfiError::Cpp(message) | FfiError::Nul(message)) => (0, message),
    }
}

/// Loads a shared library for the life of the process, its symbols available to the libraries
/// loaded after it (`RTLD_NOW | RTLD_GLOBAL`). The error is the loader's reason (empty when it
/// gave none, or for a path holding a NUL byte).
#[cfg(unix)]
pub(crate) fn load_library(path: &std::path::Path) -> std::result::Result<(), String> {
    let Ok(name) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(String::new());
    };
    // SAFETY: a NUL-terminated path; the library is never unloaded.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(loader_error());
    }
    Ok(())
}

/// The function `symbol` of the shared library at `path`, which is loaded for the life of the
/// process (`RTLD_NOW | RTLD_LOCAL`: its symbols stay its own). The error is the loader's reason.
#[cfg(unix)]
pub(crate) fn load_symbol(
    path: &std::path::Path,
    symbol: &CStr,
) -> std::result::Result<NonNull<c_void>, String> {
    let name = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} holds a NUL byte", path.display()))?;
    // SAFETY: a NUL-terminated path; the library is never unloaded.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(loader_error());
    }
    // SAFETY: a live handle and a NUL-terminated name.
    NonNull::new(unsafe { libc::dlsym(handle, symbol.as_ptr()) }).ok_or_else(loader_error)
}

/// Whether a shared library can be loaded: it is loaded, on its own (`RTLD_LAZY | RTLD_LOCAL`),
/// and closed again; the error is the loader's reason.
#[cfg(unix)]
pub(crate) fn can_load(name: &CStr) -> std::result::Result<(), String> {
    // SAFETY: a NUL-terminated name; the handle is closed once, right after.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(loader_error());
    }
    // SAFETY: a handle dlopen returned.
    unsafe { libc::dlclose(handle) };
    Ok(())
}

/// The loader's message about its last failure ("" when it has none).
#[cfg(unix)]
fn loader_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message owned by the loader.
    let error = unsafe { libc::dlerror() };
    if error.is_null() {
        return String::new();
    }
    // SAFETY: as above; copied before any other loader call.
    unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// script_save.cpp

/// Saves `module` to `path` with its tensors on `device` (`None`: the CPU, `Some(n)`:
/// `cuda:n`), from a copy of the module when a tensor is elsewhere or `always_copy` is set.
pub(crate) fn save_module(
    module: &CModule,
    path: &std::path::Path,
    device: Option<c_int>,
    always_copy: bool,
) -> Result<()> {
    let path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| FfiError::Nul(path.display().to_string()))?;
    // SAFETY: a live module and a NUL-terminated path.
    unsafe {
        check(tp_module_save(
            module_ptr(module),
            path.as_ptr(),
            device.unwrap_or(-1),
            c_int::from(always_copy),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// grad_redirect.cpp

/// The gradient route of a pruned tensor: `orig` receives `grad * mask`, and the tensor modules
/// compute with receives nothing. Owns the hook; dropping it removes the hook.
#[derive(Debug)]
pub(crate) struct GradRedirect(NonNull<TpRedirect>);

// SAFETY: the handle is only changed through &mut self or dropped, and libtorch's tensors and
// autograd nodes it refers to are themselves thread-safe.
unsafe impl Send for GradRedirect {}
unsafe impl Sync for GradRedirect {}

impl GradRedirect {
    /// Installs the hook on `target`'s gradient accumulator (`target` must be a leaf).
    pub(crate) fn new(target: &Tensor, orig: &Tensor, mask: &Tensor) -> Result<Self> {
        let mut handle = ptr::null_mut();
        // SAFETY: three live tensors (the C++ side keeps handles of its own) and a writable
        // out-parameter, set on success.
        unsafe {
            check(tp_redirect_new(
                target.as_ptr(),
                orig.as_ptr(),
                mask.as_ptr(),
                &mut handle,
            ))?;
        }
        let handle = NonNull::new(handle).expect("tp_redirect_new sets its handle on success");
        Ok(Self(handle))
    }

    /// Moves the hook to the tensor's current accumulator if libtorch replaced it (after a
    /// `set_data` that changed its dtype or device: the registry following a store moved by
    /// `VarStore::set_device` or `set_kind`).
    pub(crate) fn refresh(&mut self) -> Result<()> {
        // SAFETY: the handle is live until drop.
        unsafe { check(tp_redirect_refresh(self.0.as_ptr())) }
    }

    /// How many gradients `orig` has received through the hook so far.
    pub(crate) fn deliveries(&self) -> u64 {
        // SAFETY: the handle is live until drop.
        unsafe { tp_redirect_deliveries(self.0.as_ptr()) }
    }

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
        // SAFETY: made by tp_redirect_new, freed once.
        unsafe { tp_redirect_free(self.0.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------------------------
// shrink_graph.cpp

/// The inlined, attribute-folded `forward` graph with the shape of every top-level tensor value
/// measured on `input`, in the line format of `model/shrink/graph.rs`.
pub(crate) fn describe(module: &CModule, input: &Tensor) -> Result<String> {
    let mut text = ptr::null_mut();
    // SAFETY: a live module and tensor; `text` is ours to free when set.
    unsafe {
        check(tp_shrink_describe(
            module_ptr(module),
            input.as_ptr(),
            &mut text,
        ))?;
        let text = NonNull::new(text).expect("tp_shrink_describe sets its text on success");
        Ok(take_string(text))
    }
}

/// A parameter or buffer of the module by dotted name (the module's tensor itself).
pub(crate) fn get_tensor(module: &CModule, dotted: &str) -> Result<Tensor> {
    let name = c_string(dotted)?;
    let mut tensor = ptr::null_mut();
    // SAFETY: a live module, a NUL-terminated name; the handle set on success is a new tensor
    // the `Tensor` owns.
    unsafe {
        check(tp_shrink_get_tensor(
            module_ptr(module),
            name.as_ptr(),
            &mut tensor,
        ))?;
        assert!(
            !tensor.is_null(),
            "tp_shrink_get_tensor sets its tensor on success"
        );
        Ok(Tensor::from_ptr(tensor))
    }
}

/// Replaces a parameter or buffer of the module by a copy of `value`.
pub(crate) fn set_tensor(module: &CModule, dotted: &str, value: &Tensor) -> Result<()> {
    let name = c_string(dotted)?;
    // SAFETY: a live module and tensor, a NUL-terminated name; the C++ side copies what it keeps.
    unsafe {
        check(tp_shrink_set_tensor(
            module_ptr(module),
            name.as_ptr(),
            value.as_ptr(),
        ))
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

/// Sets the int `name` of the submodule at `path` ("" for the root).
pub(crate) fn set_int(module: &CModule, path: &str, name: &str, value: i64) -> Result<IntSlot> {
    let (p, n) = (c_string(path)?, c_string(name)?);
    let mut slot = 0;
    // SAFETY: a live module, NUL-terminated strings, a writable out-parameter.
    unsafe {
        check(tp_shrink_set_int(
            module_ptr(module),
            p.as_ptr(),
            n.as_ptr(),
            value,
            &mut slot,
        ))?;
    }
    Ok(match slot {
        1 => IntSlot::Attribute,
        2 => IntSlot::ClassConstant,
        _ => IntSlot::Absent,
    })
}

/// Rewrites the `groups` constant of the convolutions of the class of the submodule at `path`;
/// returns how many convolution calls changed.
pub(crate) fn set_groups(module: &CModule, path: &str, old: i64, new: i64) -> Result<i64> {
    let p = c_string(path)?;
    let mut changed = 0;
    // SAFETY: a live module, a NUL-terminated string, a writable out-parameter.
    unsafe {
        check(tp_shrink_set_groups(
            module_ptr(module),
            p.as_ptr(),
            old,
            new,
            &mut changed,
        ))?;
    }
    Ok(changed)
}

/// Drops the cached optimized graphs of every method, so that analysing the module again sees
/// the rewritten code.
pub(crate) fn reset_plans(module: &CModule) -> Result<()> {
    // SAFETY: a live module.
    unsafe { check(tp_shrink_reset_plans(module_ptr(module))) }
}

// ---------------------------------------------------------------------------------------------
// calibration_graph.cpp

/// A compiled copy of a TorchScript module's `forward` that also returns the inputs of some of
/// its linear layers (the module itself is not changed).
#[derive(Debug)]
pub(crate) struct CalibrationProbe {
    probe: NonNull<TpCalibrationProbe>,
    taps: Vec<String>,
}

impl CalibrationProbe {
    /// A probe of the top-level `aten::linear` calls of `module`'s inlined forward whose
    /// weight is one of `weights` (dotted names).
    pub(crate) fn new(module: &CModule, weights: &[String]) -> Result<Self> {
        let names = c_string(&weights.join("\n"))?;
        let (mut probe, mut taps) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: a live module, a NUL-terminated list; both results are ours on success.
        unsafe {
            check(tp_calibration_probe_new(
                module_ptr(module),
                names.as_ptr(),
                &mut probe,
                &mut taps,
            ))?;
            let taps = take_string(NonNull::new(taps).expect("set on success"));
            Ok(Self {
                probe: NonNull::new(probe).expect("set on success"),
                taps: taps.lines().map(str::to_string).collect(),
            })
        }
    }

    /// The weight of each returned input, in the order [`run`](Self::run) returns them (a
    /// layer called twice in one forward is listed twice).
    pub(crate) fn taps(&self) -> &[String] {
        &self.taps
    }

    /// Runs forward on `inputs` (without gradients): each tapped layer's input.
    pub(crate) fn run(&self, module: &CModule, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let handles: Vec<*const C_tensor> = inputs.iter().map(Tensor::as_ptr).collect();
        let mut out: Vec<*mut C_tensor> = vec![ptr::null_mut(); self.taps.len()];
        // SAFETY: a live probe, module and tensors; `out` has one slot per tap, each set to a
        // new handle we own on success.
        unsafe {
            check(tp_calibration_probe_run(
                self.probe.as_ptr(),
                module_ptr(module),
                handles.as_ptr(),
                handles.len(),
                out.as_mut_ptr(),
            ))?;
            Ok(out.into_iter().map(|t| Tensor::from_ptr(t)).collect())
        }
    }
}

impl Drop for CalibrationProbe {
    fn drop(&mut self) {
        // SAFETY: ours, freed once.
        unsafe { tp_calibration_probe_free(self.probe.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn script_fixture() -> CModule {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/script.pt");
        CModule::load(&path).expect("the committed TorchScript fixture loads")
    }

    #[test]
    fn a_cpp_exception_comes_back_as_its_first_line() {
        let module = script_fixture();
        let error = get_tensor(&module, "0.nothing").unwrap_err();
        assert_eq!(
            error,
            FfiError::Cpp("no tensor `0.nothing` in the module".into())
        );
        let error = set_int(&module, "5", "out_features", 2).unwrap_err();
        assert_eq!(error, FfiError::Cpp("no submodule `5` in `5`".into()));
        // After failures the module still answers.
        let weight = get_tensor(&module, "0.weight").unwrap();
        assert_eq!(weight.size(), [3, 4]);
    }

    #[test]
    fn a_nul_byte_is_refused_before_the_call() {
        let module = script_fixture();
        let error = get_tensor(&module, "0.wei\0ght").unwrap_err();
        assert_eq!(error, FfiError::Nul("0.wei\0ght".into()));
        assert!(matches!(
            PruneError::from(error),
            PruneError::InvalidArgument(m) if m.contains("NUL byte")
        ));
    }

    #[test]
    fn results_come_back_through_out_parameters() {
        let module = script_fixture();
        // `Linear` has no int class constant and no int attribute named so.
        assert_eq!(set_int(&module, "0", "no_such_int", 1), Ok(IntSlot::Absent));
        // No convolution: no call changes.
        assert_eq!(set_groups(&module, "", 1, 2), Ok(0));
        assert_eq!(reset_plans(&module), Ok(()));
        let x = Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
        set_tensor(&module, "0.bias", &x.get(0)).unwrap();
        assert_eq!(get_tensor(&module, "0.bias").unwrap().size(), [3]);
    }
}

// ---------------------------------------------------------------------------------------------
// distributed.cpp

/// One named argument of [`op_call`] (op_call.cpp's `TpOpArg`).
#[repr(C)]
struct TpOpArg {
    name: *const c_char,
    kind: c_int,
    i: i64,
    f: f64,
    ints: *const i64,
    floats: *const f64,
    tensors: *const *mut C_tensor,
    len: usize,
    text: *const c_char,
}

/// The value of one argument of [`op_call`], as an exported node gives it.
#[derive(Debug)]
pub(crate) enum OpArg<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Tensor(&'a Tensor),
    /// `None` entries for a `Tensor?[]`.
    Tensors(Vec<Option<&'a Tensor>>),
    /// `c10::ScalarType`, `c10::MemoryFormat` and `c10::Layout` by their numbers.
    ScalarType(i64),
    MemoryFormat(i64),
    Layout(i64),
    Device(String),
    Text(String),
}

/// Calls the operator `name` (`aten::conv2d`) of overload `overload` (`""` for the default)
/// with `args` by name, the others at the schema's defaults: the tensors it returns, in order
/// (a returned list flattened; an undefined tensor for a returned non-tensor).
pub(crate) fn op_call(
    name: &str,
    overload: &str,
    args: &[(&str, OpArg<'_>)],
) -> Result<Vec<Tensor>> {
    let name = c_string(name)?;
    let overload = c_string(overload)?;
    // Everything the C structures point into, alive until the call returns.
    let names: Vec<CString> = args
        .iter()
        .map(|(n, _)| c_string(n))
        .collect::<Result<_>>()?;
    let texts: Vec<Option<CString>> = args
        .iter()
        .map(|(_, a)| match a {
            OpArg::Device(t) | OpArg::Text(t) => c_string(t).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let lists: Vec<Vec<*mut C_tensor>> = args
        .iter()
        .map(|(_, a)| match a {
            OpArg::Tensor(t) => vec![t.as_ptr() as *mut C_tensor],
            OpArg::Tensors(ts) => ts
                .iter()
                .map(|t| t.map_or(ptr::null_mut(), |t| t.as_ptr() as *mut C_tensor))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let c_args: Vec<TpOpArg> = args
        .iter()
        .enumerate()
        .map(|(k, (_, a))| {
            let mut c = TpOpArg {
                name: names[k].as_ptr(),
                kind: 0,
                i: 0,
                f: 0.0,
                ints: ptr::null(),
                floats: ptr::null(),
                tensors: lists[k].as_ptr(),
                len: lists[k].len(),
                text: texts[k].as_ref().map_or(ptr::null(), |t| t.as_ptr()),
            };
            match a {
                OpArg::None => c.kind = 0,
                OpArg::Bool(b) => (c.kind, c.i) = (1, i64::from(*b)),
                OpArg::Int(i) => (c.kind, c.i) = (2, *i),
                OpArg::Float(f) => (c.kind, c.f) = (3, *f),
                OpArg::Ints(v) => (c.kind, c.ints, c.len) = (4, v.as_ptr(), v.len()),
                OpArg::Floats(v) => (c.kind, c.floats, c.len) = (5, v.as_ptr(), v.len()),
                OpArg::Tensor(_) => c.kind = 6,
                OpArg::Tensors(_) => c.kind = 7,
                OpArg::ScalarType(i) => (c.kind, c.i) = (8, *i),
                OpArg::MemoryFormat(i) => (c.kind, c.i) = (9, *i),
                OpArg::Layout(i) => (c.kind, c.i) = (10, *i),
                OpArg::Device(_) => c.kind = 11,
                OpArg::Text(_) => c.kind = 12,
            }
            c
        })
        .collect();
    let mut outputs = ptr::null_mut();
    let mut count = 0usize;
    // SAFETY: every pointer in `c_args` points into `names`, `texts`, `lists` or `args`, alive
    // for the call; the out-parameters are written on success only.
    unsafe {
        check(tp_op_call(
            name.as_ptr(),
            overload.as_ptr(),
            c_args.as_ptr(),
            c_args.len(),
            &mut outputs,
            &mut count,
        ))?;
        let handles = std::slice::from_raw_parts(outputs, count);
        let tensors = handles.iter().map(|&h| Tensor::from_ptr(h)).collect();
        libc::free(outputs.cast());
        Ok(tensors)
    }
}

/// Where a process joins its group: the launcher's store and this rank's place in the group.
pub(crate) struct GroupAddress<'a> {
    pub host: &'a str,
    pub port: u16,
    pub rank: i32,
    pub world_size: i32,
    /// Whether this process runs the store's server (rank 0 when no launcher hosts one).
    pub host_store: bool,
    pub timeout_ms: i64,
    /// The prefix of the group's keys in the store.
    pub prefix: &'a str,
    /// The network interfaces for Gloo's sockets, comma-separated; empty for the default.
    pub interfaces: &'a str,
}

/// A c10d TCPStore and Gloo process group, with NCCL for CUDA tensors once
/// [`use_nccl`](Self::use_nccl) added it (distributed.cpp), owned; left on drop.
///
/// libtorch's c10d objects are thread-safe, and the handle is only ever used through `&mut`
/// or by the one owner, so moving it to another thread is sound.
pub(crate) struct C10dGroup(NonNull<TpGroup>);

// SAFETY: see above; the C++ object has no thread affinity.
unsafe impl Send for C10dGroup {}

/// The reduction of [`C10dGroup::all_reduce`].
#[derive(Clone, Copy)]
pub(crate) enum Reduce {
    Sum = 0,
    Max = 1,
}

impl C10dGroup {
    /// Joins the group; returns when every rank has joined (Gloo's rendezvous), or fails at the
    /// timeout.
    pub(crate) fn new(address: &GroupAddress<'_>) -> Result<Self> {
        let host = c_string(address.host)?;
        let prefix = c_string(address.prefix)?;
        let interfaces = c_string(address.interfaces)?;
        let mut group = ptr::null_mut();
        // SAFETY: valid C strings and one writable out-parameter; the handle is ours.
        unsafe {
            check(tp_group_new(
                host.as_ptr(),
                c_int::from(address.port),
                address.rank,
                address.world_size,
                c_int::from(address.host_store),
                address.timeout_ms,
                prefix.as_ptr(),
                interfaces.as_ptr(),
                &mut group,
            ))?;
        }
        NonNull::new(group)
            .map(C10dGroup)
            .ok_or_else(|| FfiError::Cpp("no process group was made".into()))
    }

    /// Adds NCCL for CUDA tensors: `factory` is `tp_nccl_backend_new` of the NCCL library
    /// ([`load_symbol`]).
    ///
    /// # Safety
    /// `factory` must be that function.
    pub(crate) unsafe fn use_nccl(&mut self, factory: NonNull<c_void>) -> Result<()> {
        // SAFETY: a live group; the caller vouches for the function.
        unsafe { check(tp_group_use_nccl(self.0.as_ptr(), factory.as_ptr())) }
    }

    /// In place on every rank. The collectives take a dense contiguous tensor (checked by the
    /// caller): on the CPU through Gloo, or on a GPU through NCCL when `nccl`.
    pub(crate) fn all_reduce(&mut self, tensor: &Tensor, op: Reduce, nccl: bool) -> Result<()> {
        // SAFETY: a live group and a live tensor.
        unsafe {
            check(tp_group_all_reduce(
                self.0.as_ptr(),
                tensor.as_ptr(),
                op as c_int,
                c_int::from(nccl),
            ))
        }
    }

    /// Rank `root`'s `tensor` into every rank's, in place.
    pub(crate) fn broadcast(&mut self, tensor: &Tensor, root: i32, nccl: bool) -> Result<()> {
        // SAFETY: as above.
        unsafe {
            check(tp_group_broadcast(
                self.0.as_ptr(),
                tensor.as_ptr(),
                root,
                c_int::from(nccl),
            ))
        }
    }

    /// Every rank's `tensor`, stacked in rank order.
    pub(crate) fn all_gather(&mut self, tensor: &Tensor, nccl: bool) -> Result<Tensor> {
        let mut gathered = ptr::null_mut();
        // SAFETY: as above, and one out-parameter receiving a new handle we own.
        unsafe {
            check(tp_group_all_gather(
                self.0.as_ptr(),
                tensor.as_ptr(),
                c_int::from(nccl),
                &mut gathered,
            ))?;
            Ok(Tensor::from_ptr(gathered))
        }
    }

    /// Returns when every rank has called it.
    pub(crate) fn barrier(&mut self) -> Result<()> {
        // SAFETY: a live group.
        unsafe { check(tp_group_barrier(self.0.as_ptr())) }
    }

    /// Tears down the Gloo connections, keeping the store: the ranks still waiting on this one
    /// fail at once. Collectives fail after it.
    pub(crate) fn abort(&mut self) {
        // SAFETY: a live group.
        unsafe { tp_group_abort(self.0.as_ptr()) }
    }

    /// Sets `key` of the group's store.
    pub(crate) fn store_set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = c_string(key)?;
        // SAFETY: a live group, a C string, and `value`'s bytes with their length.
        unsafe {
            check(tp_group_store_set(
                self.0.as_ptr(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
            ))
        }
    }

    /// Whether `key` is set in the group's store, without waiting.
    pub(crate) fn store_check(&mut self, key: &str) -> Result<bool> {
        let key = c_string(key)?;
        let mut present = 0;
        // SAFETY: a live group, a C string, one out-parameter.
        unsafe {
            check(tp_group_store_check(
                self.0.as_ptr(),
                key.as_ptr(),
                &mut present,
            ))?
        };
        Ok(present != 0)
    }

    /// The value of `key`, waiting for it up to the group's timeout.
    pub(crate) fn store_get(&mut self, key: &str) -> Result<String> {
        let key = c_string(key)?;
        let mut value = ptr::null_mut();
        // SAFETY: as above; the value is ours to free.
        unsafe {
            check(tp_group_store_get(
                self.0.as_ptr(),
                key.as_ptr(),
                &mut value,
            ))?;
            Ok(NonNull::new(value)
                .map(|v| take_string(v))
                .unwrap_or_default())
        }
    }
}

impl Drop for C10dGroup {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and not used again.
        unsafe { tp_group_free(self.0.as_ptr()) }
    }
}
