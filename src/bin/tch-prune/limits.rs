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
//!   is not limited.

use anyhow::{anyhow, bail, Result};
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
        drop(memory);
        drop(done);
        let _ = watchdog.join();
        result.map_err(|e| {
            let text = format!("{e:#}");
            let out_of_memory = ["not enough memory", "can't allocate memory", "bad_alloc"]
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

impl MemoryLimit {
    fn set(extra: u64) -> Self {
        let Some(held) = data_bytes() else {
            return Self { old: None };
        };
        // SAFETY: plain libc calls on a local struct.
        unsafe {
            let mut old: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_DATA, &mut old) != 0 {
                return Self { old: None };
            }
            let wanted = held.saturating_add(extra).min(old.rlim_max as u64);
            let new = libc::rlimit {
                rlim_cur: wanted as libc::rlim_t,
                rlim_max: old.rlim_max,
            };
            if wanted >= old.rlim_cur as u64 || libc::setrlimit(libc::RLIMIT_DATA, &new) != 0 {
                return Self { old: None };
            }
            Self { old: Some(old) }
        }
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            // SAFETY: restores the soft limit read before (the hard one never changed).
            unsafe { libc::setrlimit(libc::RLIMIT_DATA, &old) };
        }
    }
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

    #[test]
    fn an_allocation_past_the_limit_fails_and_the_limit_is_restored() {
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
}
