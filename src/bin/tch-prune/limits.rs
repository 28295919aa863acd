//! Limits on the model's own code where the CLI runs it (`shrink` runs `forward` for the
//! analysis, the latency and `--verify`): a wall-clock limit per run and a memory limit.
//!
//! Both hold in this process, around each run, rather than in a child process: the run is in
//! libtorch, inside this process's model, and its results (the analysis, the shrunk module) are
//! libtorch objects that a child could only hand back through a file.
//! - Time: a watchdog thread waits for the run to end; past the limit it removes the temporary
//!   files (as the signal handler does), prints one line and ends the process (`_exit`): a loop
//!   in TorchScript cannot be interrupted, only its process ended. Nothing is written before the
//!   model has run for the last time, so no output is left half-written.
//! - Memory: the soft `RLIMIT_DATA` (the process's private writable memory: heap, anonymous
//!   maps, thread stacks) is set to what the process holds when the run starts plus the limit,
//!   and restored after it. libtorch's allocator then fails the allocation that would pass it,
//!   with an error instead of the machine's memory. `RLIMIT_AS` would not do: libtorch's start-up
//!   maps gigabytes of address space (CUDA libraries) that it never touches. Device (GPU) memory
//!   is not limited. The process's own allocations count too, so one of Rust's (the message of
//!   the error libtorch raised, a progress bar's line) can be refused while the limit holds, and
//!   Rust would abort the process: [`RaisedWhenRefused`] raises the limit by what it asks, and
//!   the run ends with the memory limit's error line instead.

use anyhow::{anyhow, bail, Result};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The limits of one run of the model's code.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub time: Duration,
    /// Bytes of memory the run may take beyond what the process holds when it starts.
    pub memory: u64,
}

impl Limits {
    /// From `--time-limit` and `--memory-limit`; the memory limit defaults to 2 GiB or four
    /// times the `input` file, whichever is larger.
    pub fn from_flags(time: &str, memory: Option<&str>, input: &std::path::Path) -> Result<Self> {
        let time = parse_duration(time, "--time-limit")?;
        let memory = match memory {
            Some(text) => parse_bytes(text, "--memory-limit")?,
            None => {
                let file = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
                (2u64 << 30).max(file.saturating_mul(4))
            }
        };
        Ok(Limits { time, memory })
    }
}

/// "60", "90s", "2m": seconds unless suffixed.
pub fn parse_duration(text: &str, flag: &str) -> Result<Duration> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('s') {
        Some(n) => (n, 1.0),
        None => match t.strip_suffix('m') {
            Some(n) => (n, 60.0),
            None => (t, 1.0),
        },
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && (v * scale).is_finite() && v * scale <= 1e9 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => bail!("{flag} '{text}': give seconds (60, 90s) or minutes (2m), more than 0"),
    }
}

/// "2G", "512M", "1.5GiB", "3000000000": bytes (binary units: G is GiB).
pub fn parse_bytes(text: &str, flag: &str) -> Result<u64> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (number, scale) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        _ => (body, 1),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v * (scale as f64) < 1.8e19 => Ok((v * scale as f64) as u64),
        _ => bail!("{flag} '{text}': give a size such as 4G, 512M or 3000000000 (bytes)"),
    }
}

/// A size for messages: "2.0 GiB".
pub fn shown(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit == "bytes" {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {unit}")
    }
}

impl Limits {
    /// Runs `f`, which runs the model's code (`what` names it in messages: "forward"), under the
    /// limits.
    pub fn run<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let (done, wait) = mpsc::channel::<()>();
        let (time, line) = (
            self.time,
            format!(
                "error: the model's {what} ran past the {} limit (--time-limit): ended",
                shown_duration(self.time)
            ),
        );
        let watchdog = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(time) {
                tch_prune::checkpoint::remove_temporary_files();
                eprintln!("{line}");
                // SAFETY: ends the process at once, as the signal handler does: the model's
                // code cannot be stopped otherwise, and nothing has been written yet.
                unsafe { libc::_exit(1) };
            }
        });
        let memory = MemoryLimit::set(self.memory);
        let result = f();
        let raised = memory.was_raised();
        drop(memory);
        drop(done);
        let _ = watchdog.join();
        let result = match result {
            Ok(_) if raised => Err(anyhow!(
                "not enough memory for the process's own allocations"
            )),
            result => result,
        };
        result.map_err(|e| {
            let text = format!("{e:#}");
            let out_of_memory = raised
                || ["not enough memory", "can't allocate memory", "bad_alloc"]
                    .iter()
                    .any(|w| text.contains(w));
            if out_of_memory {
                // libtorch's "...: you tried to allocate 3200000000 bytes. Error code 12 (...)".
                let asked = text
                    .split("tried to allocate ")
                    .nth(1)
                    .and_then(|t| t.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok());
                match asked {
                    Some(n) => anyhow!(
                        "the model's {what} needed more than the {} memory limit (--memory-limit): it asked for {n} bytes ({}) at once",
                        shown(self.memory),
                        shown(n)
                    ),
                    None => anyhow!(
                        "the model's {what} needed more than the {} memory limit (--memory-limit): {}",
                        shown(self.memory),
                        crate::text::first_line(&text)
                    ),
                }
            } else {
                e
            }
        })
    }
}

fn shown_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// The soft `RLIMIT_DATA` lowered for the guard's lifetime, restored when dropped.
struct MemoryLimit {
    old: Option<libc::rlimit>,
}

/// The soft limit the live [`MemoryLimit`] set (0: none), what it may still be raised by, and
/// whether an allocation of the process's own raised it. Changed only under [`locked`].
static LOWERED: AtomicU64 = AtomicU64::new(0);
static RAISE_LEFT: AtomicU64 = AtomicU64::new(0);
static RAISED: AtomicBool = AtomicBool::new(false);
static LOCK: AtomicBool = AtomicBool::new(false);

/// The most the process's own allocations may raise one run's limit by, in all.
const MAX_RAISE: u64 = 64 << 20;

/// Runs `f` holding a spin lock: the limit is changed from inside the allocator, so a mutex
/// (which may allocate) will not do, and a raise must not land after the limit is restored.
fn locked<T>(f: impl FnOnce() -> T) -> T {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    let result = f();
    LOCK.store(false, Ordering::Release);
    result
}

/// Sets the soft `RLIMIT_DATA`, the hard one unchanged. Makes no allocation.
fn set_soft_limit(bytes: u64) -> Option<libc::rlimit> {
    // SAFETY: plain libc calls on local structs.
    unsafe {
        let mut old: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_DATA, &mut old) != 0 {
            return None;
        }
        let new = libc::rlimit {
            rlim_cur: bytes.min(old.rlim_max as u64) as libc::rlim_t,
            rlim_max: old.rlim_max,
        };
        (libc::setrlimit(libc::RLIMIT_DATA, &new) == 0).then_some(old)
    }
}

impl MemoryLimit {
    fn set(extra: u64) -> Self {
        let Some(held) = data_bytes() else {
            return Self { old: None };
        };
        let wanted = held.saturating_add(extra);
        let old = locked(|| {
            // SAFETY: a plain libc call on a local struct.
            let mut now: libc::rlimit = unsafe { std::mem::zeroed() };
            if unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut now) } != 0
                || wanted >= now.rlim_cur as u64
            {
                return None;
            }
            let old = set_soft_limit(wanted)?;
            LOWERED.store(wanted, Ordering::Relaxed);
            RAISE_LEFT.store(MAX_RAISE, Ordering::Relaxed);
            RAISED.store(false, Ordering::Relaxed);
            Some(old)
        });
        Self { old }
    }

    /// Whether one of the process's own allocations had to raise the limit.
    fn was_raised(&self) -> bool {
        self.old.is_some() && locked(|| RAISED.load(Ordering::Relaxed))
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            locked(|| {
                LOWERED.store(0, Ordering::Relaxed);
                // SAFETY: restores the soft limit read before (the hard one never changed).
                unsafe { libc::setrlimit(libc::RLIMIT_DATA, &old) };
            });
        }
    }
}

/// The process's allocator: the system's, except that an allocation refused while a
/// [`MemoryLimit`] holds raises the soft limit by its size (and a MiB, for the allocator's own
/// bookkeeping; [`MAX_RAISE`] in all) and is tried again. The limit is there for the model's
/// code, which libtorch runs with its own allocations; one of Rust's, refused, would abort the
/// process with no error line. The run that raised it ends as one past the limit.
pub struct RaisedWhenRefused;

#[global_allocator]
static ALLOCATOR: RaisedWhenRefused = RaisedWhenRefused;

impl RaisedWhenRefused {
    fn retried(size: usize, mut alloc: impl FnMut() -> *mut u8) -> *mut u8 {
        let mut ptr = alloc();
        while ptr.is_null() && raise_limit(size) {
            ptr = alloc();
        }
        ptr
    }
}

// SAFETY: every call goes to `System` with its own arguments; only a refusal is tried again.
unsafe impl GlobalAlloc for RaisedWhenRefused {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::retried(layout.size(), || unsafe { System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::retried(layout.size(), || unsafe { System.alloc_zeroed(layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A refused realloc leaves `ptr` as it was, so it can be asked again.
        Self::retried(new_size, || unsafe {
            System.realloc(ptr, layout, new_size)
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Raises the lowered soft limit by `size` and a MiB; false when no limit is lowered or the
/// raises would pass [`MAX_RAISE`]. Makes no allocation (it runs inside the allocator).
fn raise_limit(size: usize) -> bool {
    locked(|| {
        let (current, left) = (
            LOWERED.load(Ordering::Relaxed),
            RAISE_LEFT.load(Ordering::Relaxed),
        );
        let by = (size as u64).saturating_add(1 << 20);
        if current == 0 || by > left || set_soft_limit(current + by).is_none() {
            return false;
        }
        LOWERED.store(current + by, Ordering::Relaxed);
        RAISE_LEFT.store(left - by, Ordering::Relaxed);
        RAISED.store(true, Ordering::Relaxed);
        true
    })
}

/// The process's data size (`VmData` of /proc/self/status, what `RLIMIT_DATA` counts), in bytes.
fn data_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmData:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("2G", "f").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MiB", "f").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1000", "f").unwrap(), 1000);
        assert!(parse_bytes("-1G", "f").is_err());
        assert!(parse_bytes("lots", "f").is_err());
        assert_eq!(parse_duration("90s", "f").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m", "f").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0", "f").is_err());
        assert!(parse_duration("inf", "f").is_err());
        assert_eq!(shown(2 << 30), "2.0 GiB");
    }

    /// The limit is the process's: the tests that set it take turns.
    static ONE_LIMIT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn an_allocation_past_the_limit_fails_and_the_limit_is_restored() {
        let _turn = ONE_LIMIT_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let limits = Limits {
            time: Duration::from_secs(60),
            memory: 64 << 20,
        };
        let err = limits
            .run("forward", || {
                let t = tch::Tensor::f_zeros([1 << 28], (tch::Kind::Float, tch::Device::Cpu))?;
                Ok(t.numel())
            })
            .expect_err("1 GiB past a 64 MiB limit");
        assert!(err.to_string().contains("--memory-limit"), "{err}");
        let t = tch::Tensor::zeros([1 << 26], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(t.numel(), 1 << 26);
    }

    /// An allocation of Rust's own refused under the limit would abort the process (Rust's
    /// "memory allocation of N bytes failed", no error line): it raises the limit instead, and
    /// the run ends with the limit's error.
    #[test]
    fn an_allocation_of_the_process_past_the_limit_ends_the_run_with_its_error() {
        let _turn = ONE_LIMIT_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let limits = Limits {
            time: Duration::from_secs(60),
            memory: 1 << 20,
        };
        let err = limits
            .run("forward", || Ok(vec![1u8; 16 << 20].len()))
            .expect_err("16 MiB past a 1 MiB limit");
        assert!(err.to_string().contains("--memory-limit"), "{err}");
        assert_eq!(LOWERED.load(Ordering::SeqCst), 0, "the limit is restored");
        assert_eq!(vec![1u8; 256 << 20].len(), 256 << 20);
    }
}
