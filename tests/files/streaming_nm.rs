//! N:M sparsity on the streaming path, pruned a block of rows at a time, against the in-memory
//! path (`NmSparsity::compute_mask` on the whole tensor): the same bytes for every dtype, for
//! blocks along every dimension (contiguous and strided), partial blocks, blocks longer than
//! the row, the two rankings (counted for short blocks, sorted for long ones), ties, signed
//! zeros, infinities and NaNs; and anonymous memory that does not grow with the tensor.

use crate::common;

use common::{streamed_as_in_memory, streamed_peak, Cli};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::write_safetensors;

/// Bits of infinities and NaNs of `kind`, and the integer dtype of its width.
fn specials(kind: Kind) -> (Kind, Vec<i64>) {
    match kind {
        Kind::Double => (
            Kind::Int64,
            vec![
                0x7ff0_0000_0000_0000,
                0xfff8_0000_0000_0000u64 as i64,
                0x7ff0_0000_0000_0001,
            ],
        ),
        Kind::Float => (
            Kind::Int,
            vec![0x7f80_0000, 0xffc0_0000u32 as i32 as i64, 0x7f80_0001],
        ),
        Kind::Half => (Kind::Int16, vec![0x7c00, 0xfe00u16 as i16 as i64, 0x7c01]),
        _ => (Kind::Int16, vec![0x7f80, 0xffc0u16 as i16 as i64, 0x7f81]),
    }
}

/// Values rounded to halves (many ties, signed zeros among them) of `kind`, `shape`.
fn tied(shape: &[i64], kind: Kind) -> Tensor {
    ((Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 2.0).round() / 2.0).to_kind(kind)
}

/// Weights of several shapes; `special.weight` holds infinities and NaNs in some blocks.
fn model(kind: Kind) -> Vec<(String, Tensor)> {
    let _generator = common::generator();
    tch::manual_seed(3);
    let special = tied(&[64, 70], kind);
    let (int, bits) = specials(kind);
    let flat = special.view([-1]).view_dtype(int);
    for i in 0..60i64 {
        let _ = flat
            .narrow(0, i * 73 + 5, 1)
            .fill_(bits[i as usize % bits.len()]);
    }
    vec![
        ("fc.weight".into(), tied(&[48, 64], kind)),
        ("odd.weight".into(), tied(&[30, 45], kind)),
        ("conv.weight".into(), tied(&[8, 10, 3, 3], kind)),
        ("wide.weight".into(), tied(&[6, 100], kind)),
        ("special.weight".into(), special),
        ("fc.bias".into(), tied(&[48], kind)),
    ]
}

#[test]
fn streamed_nm_writes_the_in_memory_bytes() {
    let dir = common::tempdir();
    let runs: &[&[&str]] = &[
        &["--pattern", "2:4"],
        &["--pattern", "1:3"],
        &["--pattern", "2:4", "--dim", "0"],
        &["--pattern", "3:8", "--dim", "-1"],
        // Blocks of 40 are ranked by sorting; 2:100 is longer than most rows.
        &["--pattern", "5:40"],
        &["--pattern", "2:100"],
        &["--pattern", "0:2", "--dim", "0"],
    ];
    for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
        let input = dir.path().join(format!("{kind:?}.safetensors"));
        write_safetensors(&input, &model(kind)).expect("write model");
        for run in runs {
            let mut flags = vec!["--method", "nm", "--params", "*.weight"];
            flags.extend(*run);
            let x = streamed_as_in_memory(&input, &flags, dir.path(), &format!("{kind:?}"));
            assert_ne!(x, std::fs::read(&input).expect("read"), "{kind:?} {run:?}");
        }
    }
}

/// A tensor N:M cannot take (1-D) fails as in memory, with the same message.
#[test]
fn a_tensor_nm_refuses_fails_as_in_memory() {
    let dir = common::tempdir();
    let input = dir.path().join("model.safetensors");
    write_safetensors(&input, &model(Kind::Float)).expect("write model");
    let flags = ["--method", "nm", "--pattern", "2:4", "--params", "*"];
    let fails = |cli: Cli| {
        let out = cli.run();
        assert!(!out.status.success(), "{cli} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let streamed = fails(Cli::prune(&input, &dir.path().join("a.safetensors")).args(flags));
    let in_memory = fails(
        Cli::prune(&input, &dir.path().join("b.safetensors"))
            .args(flags)
            .arg("--in-memory"),
    );
    assert!(streamed.contains("multidimensional"), "{streamed}");
    assert!(in_memory.contains("multidimensional"), "{in_memory}");
    assert!(!dir.path().join("a.safetensors").exists());
}

/// 2:4 and the structured methods on a 256 MiB tensor, along dim 1 and dim 0: the whole-tensor
/// path would hold the tensor and its mask or product (more than 256 MiB); the streamed one
/// holds chunks (and, structured, one norm per channel).
#[test]
fn streamed_nm_and_structured_memory_does_not_grow_with_the_tensor() {
    let dir = common::tempdir();
    let large = dir.path().join("large.safetensors");
    let small = dir.path().join("small.safetensors");
    {
        let _generator = common::generator();
        tch::manual_seed(0);
        let big = Tensor::randn([8192, 8192], (Kind::Float, Device::Cpu));
        write_safetensors(&large, &[("big.weight", &big)]).expect("write large");
        let little = Tensor::randn([64, 64], (Kind::Float, Device::Cpu));
        write_safetensors(&small, &[("big.weight", &little)]).expect("write small");
    }
    let out = dir.path().join("out.safetensors");
    let methods = [
        "--method nm --pattern 2:4 --dim",
        "--method ln-structured --amount 0.5 --n 2 --dim",
        "--method random-structured --amount 0.5 --dim",
    ];
    for method in methods {
        for dim in ["1", "0"] {
            let run = |input: &std::path::Path| {
                streamed_peak(&Cli::prune(input, &out).flags(&format!("{method} {dim}")))
            };
            let extra = run(&large).saturating_sub(run(&small));
            eprintln!(
                "{method} {dim}: {:.1} MB over a tiny model's",
                extra as f64 / 1e6
            );
            assert!(
                extra < 64 << 20,
                "{method} {dim}: {extra} bytes over the baseline"
            );
        }
    }
}
