//! The writers copy one tensor at a time: a tensor that is not a contiguous CPU tensor of the
//! written dtype (a GPU tensor, a strided view, a boolean mask written as floats) is copied to
//! the host as it is written, so the extra host memory of a write is its largest such tensor,
//! not the whole output. Checked here with strided CPU tensors and masks written as f32, which
//! take the same path as GPU tensors, by the process's peak resident memory (reset through
//! /proc/self/clear_refs): one test in its own binary, so nothing else allocates meanwhile.

use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{
    read_safetensors, read_torch_zip, write_safetensors_as, write_torch_zip,
};

const MIB: i64 = 1 << 20;

/// Resets the peak resident memory to the current one; returns false where Linux's
/// /proc/self/clear_refs is not there to do it.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak and current resident memory, in bytes.
fn resident() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |key: &str| -> i64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<i64>()
            .unwrap()
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Extra peak memory of `write`, over what was resident before it.
fn extra_peak(write: impl FnOnce()) -> i64 {
    let (_, before) = resident();
    assert!(reset_peak());
    write();
    let (peak, _) = resident();
    peak - before
}

#[test]
fn writers_hold_one_copied_tensor_at_a_time() {
    if !reset_peak() {
        eprintln!("skipped: /proc/self/clear_refs is not writable here");
        return;
    }
    tch::manual_seed(0);
    // 8 tensors of 32 MiB, each a transposed view (not contiguous): 256 MiB to copy in all.
    let tensors: Vec<(String, Tensor)> = (0..8)
        .map(|i| {
            let t = Tensor::randn([2048, 4096], (Kind::Float, Device::Cpu)).tr();
            (format!("t{i}"), t)
        })
        .collect();
    // 8 boolean masks of 8 Mi entries, written as f32 (32 MiB each).
    let masks: Vec<(String, Tensor)> = (0..8)
        .map(|i| {
            let m = Tensor::rand([8 * MIB], (Kind::Float, Device::Cpu)).gt(0.5);
            (format!("m{i}"), m)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let largest = 32 * MIB;
    // Two copies in flight at most (the one being written, the buffer of the next), plus the
    // writers' own buffers: well under the 256 MiB of all copies together.
    let bound = 3 * largest;

    let st = dir.path().join("t.safetensors");
    let entries: Vec<(&str, &Tensor, Option<Kind>)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t, None))
        .chain(
            masks
                .iter()
                .map(|(n, m)| (n.as_str(), m, Some(Kind::Float))),
        )
        .collect();
    let peak = extra_peak(|| write_safetensors_as(&st, &entries, &Default::default()).unwrap());
    eprintln!(
        "safetensors, 512 MiB copied or converted: {} MiB extra peak",
        peak / MIB
    );
    assert!(peak < bound, "safetensors: {} MiB extra", peak / MIB);
    let zip = dir.path().join("t.pt");
    let peak = extra_peak(|| write_torch_zip(&zip, &tensors).unwrap());
    eprintln!(
        "torch.save zip, 256 MiB copied: {} MiB extra peak",
        peak / MIB
    );
    assert!(peak < bound, "torch zip: {} MiB extra", peak / MIB);

    // And what was written is right.
    let back: std::collections::HashMap<String, Tensor> =
        read_safetensors(&st).unwrap().into_iter().collect();
    assert_eq!(back.len(), 16);
    for (name, t) in tensors.iter().chain(&masks) {
        let want = if t.kind() == Kind::Bool {
            t.to_kind(Kind::Float)
        } else {
            t.shallow_clone()
        };
        assert_eq!(back[name].kind(), Kind::Float, "{name}");
        assert!(back[name].equal(&want), "{name}");
    }
    for ((name, t), (read_name, r)) in tensors.iter().zip(read_torch_zip(&zip).unwrap()) {
        assert_eq!(name, &read_name);
        assert!(r.equal(t), "{name}");
    }
}
