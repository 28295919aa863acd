//! The streaming path's masked write against the in-memory path on the values where the two
//! could part: NaNs with payloads (quiet and signalling, both signs), infinities, signed zeros,
//! subnormals, and ties within and across tensors and shards, in f32, f64, f16 and bf16, with
//! thresholds among the finite values and among the infinities and NaNs. The streaming path
//! masks finite pieces itself and leaves pieces holding an infinity or a NaN to libtorch: the
//! tensors span several such pieces, some with special values (the last entry included) and
//! some without, so both routes and their boundaries are crossed.

use crate::common;

use common::{assert_bits, streamed_as_in_memory, Cli};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{read_safetensors, write_safetensors};

/// Entries per piece of the masked multiply (`MASK_PIECE` in the crate).
const PIECE: i64 = 1 << 18;

/// The integer dtype of the same width, to set bit patterns.
fn int_of(kind: Kind) -> Kind {
    match kind {
        Kind::Double => Kind::Int64,
        Kind::Float => Kind::Int,
        _ => Kind::Int16,
    }
}

/// Infinities and NaNs (signalling, quiet, negative, with payloads) of `kind`, as bits.
fn non_finite(kind: Kind) -> Vec<i64> {
    match kind {
        Kind::Double => vec![
            0x7ff0_0000_0000_0001,
            0xfff8_0000_0000_0000u64 as i64,
            0x7ff8_0000_1234_5678,
            0x7ff0_0000_0000_0000,
            0xfff0_0000_0000_0000u64 as i64,
        ],
        Kind::Float => vec![
            0x7f80_0001,
            0xffc0_0000u32 as i32 as i64,
            0x7fc1_2345,
            0x7f80_0000,
            0xff80_0000u32 as i32 as i64,
        ],
        Kind::Half => vec![
            0x7c01,
            0xfe00u16 as i16 as i64,
            0x7e55,
            0x7c00,
            0xfc00u16 as i16 as i64,
        ],
        _ => vec![
            0x7f81,
            0xffc0u16 as i16 as i64,
            0x7fd5,
            0x7f80,
            0xff80u16 as i16 as i64,
        ],
    }
}

/// Subnormals and signed zeros of `kind`, as bits.
fn tiny(kind: Kind) -> Vec<i64> {
    let sign = match kind {
        Kind::Double => i64::MIN,
        Kind::Float => i32::MIN as i64,
        _ => i16::MIN as i64,
    };
    vec![1, sign | 5, sign, 0, 3]
}

/// Quarter-rounded normal draws (many ties) of `kind`.
fn tied(numel: i64, kind: Kind) -> Tensor {
    ((Tensor::randn([numel], (Kind::Float, Device::Cpu)) * 4.0).round() / 4.0).to_kind(kind)
}

/// Sets the entries at `positions` of the flat `t` to the bit patterns `bits`, cycled.
fn set_bits(t: &Tensor, positions: impl Iterator<Item = i64>, bits: &[i64]) {
    let int = t.view_dtype(int_of(t.kind()));
    for (i, p) in positions.enumerate() {
        let _ = int.narrow(0, p, 1).fill_(bits[i % bits.len()]);
    }
}

/// `a.weight`: four pieces, specials in the first two and at the very last entry, the third
/// clean; `b.weight`: half infinities and NaNs; `c.weight`: clean ties, one piece and a bit.
fn model(kind: Kind) -> Vec<(String, Tensor)> {
    let _generator = common::generator();
    tch::manual_seed(21);
    let a = tied(3 * PIECE + 1000, kind);
    set_bits(&a, (0..40).map(|i| 17 + i * 6007), &non_finite(kind));
    set_bits(&a, (0..40).map(|i| 23 + i * 6011), &tiny(kind));
    set_bits(
        &a,
        [PIECE + 5, 3 * PIECE + 999].into_iter(),
        &non_finite(kind)[1..],
    );
    let b = tied(400, kind);
    set_bits(&b, (0..200).map(|i| 2 * i), &non_finite(kind));
    let c = tied(PIECE + 77, kind);
    set_bits(&c, (0..30).map(|i| 101 + i * 9001), &tiny(kind));
    vec![
        ("a.weight".into(), a.view([8, -1])),
        ("b.weight".into(), b.view([40, 10])),
        ("c.weight".into(), c),
    ]
}

/// Global thresholds among the ties (0.5) and among the infinities and NaNs (0.9999: the
/// 109 largest entries kept), per-tensor ones likewise.
const RUNS: &[&[&str]] = &[
    &["--amount", "0.5", "--global"],
    &["--amount", "0.9999", "--global"],
    &["--amount", "0.3"],
    &["--amount", "0.999"],
    &["--amount", "17"],
];

fn prune(input: &Path, output: &Path, run: &[&str], in_memory: bool) -> String {
    let mut flags = vec!["--method", "l1-unstructured"];
    flags.extend(run);
    if in_memory {
        flags.push("--in-memory");
    }
    Cli::prune(input, output).args(&flags).ok()
}

#[test]
fn special_values_and_ties_come_out_as_in_memory() {
    let dir = common::tempdir();
    for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
        let input = dir.path().join(format!("{kind:?}.safetensors"));
        let tensors = model(kind);
        write_safetensors(&input, &tensors).expect("write model");
        for run in RUNS {
            let mut flags = vec!["--method", "l1-unstructured"];
            flags.extend(*run);
            let x = streamed_as_in_memory(&input, &flags, dir.path(), &format!("{kind:?}"));
            assert_ne!(x, std::fs::read(&input).expect("read"), "{kind:?} {run:?}");
        }
    }
}

/// The model in two shards (`a`, then `b` and `c`): a global step's ties shared across shards,
/// each tensor bit for bit what the in-memory path gives on the merged file.
#[test]
fn ties_across_shards_come_out_as_in_memory() {
    let dir = common::tempdir();
    for kind in [Kind::Float, Kind::BFloat16] {
        let tensors = model(kind);
        let merged = dir.path().join(format!("{kind:?}.safetensors"));
        write_safetensors(&merged, &tensors).expect("write merged");
        let shards = dir.path().join(format!("{kind:?}-shards"));
        std::fs::create_dir(&shards).expect("folder");
        let names = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ];
        write_safetensors(shards.join(names[0]), &tensors[..1]).expect("shard 1");
        write_safetensors(shards.join(names[1]), &tensors[1..]).expect("shard 2");
        let weight_map: serde_json::Map<String, serde_json::Value> = tensors
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), names[(i > 0) as usize].into()))
            .collect();
        let index = shards.join("model.safetensors.index.json");
        std::fs::write(
            &index,
            serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
        )
        .expect("index");
        for run in &RUNS[..2] {
            let out = dir.path().join(format!("out-{kind:?}-{}", run[1]));
            let said = prune(&index, &out, run, false);
            assert!(said.contains("2 shards"), "{said}");
            let reference = dir.path().join("reference.safetensors");
            prune(&merged, &reference, run, true);
            let expected = read_safetensors(&reference).expect("read reference");
            let mut got = read_safetensors(out.join(names[0])).expect("shard 1");
            got.extend(read_safetensors(out.join(names[1])).expect("shard 2"));
            assert_eq!(got.len(), expected.len());
            for (name, t) in &expected {
                let (_, g) = got
                    .iter()
                    .find(|(n, _)| n == name)
                    .expect("tensor in a shard");
                assert_bits(g, t, &format!("{kind:?} {run:?} {name}"));
            }
        }
    }
}
