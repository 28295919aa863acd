//! A seeded mutation fuzzer of the file readers: `torch.save` zips (read, and mapped by
//! `MappedTorchSave`), TorchScript archives (their state and their code check), safetensors
//! files and `torch.export` archives (`.pt2`, read and, when read, written back and read again).
//!
//! Each input is a valid file mutated: raw bytes (flips, interesting values, cuts, inserts,
//! splices), or, to get past the zip CRCs, one entry's contents (`data.pkl`, a storage, a
//! `code/*.py`, a `.pt2`'s JSON) mutated and the archive rebuilt, or a safetensors header's JSON. Every input
//! must be read or refused with one line naming the file; never a panic, an abort, an input
//! that takes more than a few seconds, or a peak resident memory above [`MEMORY_CEILING_MIB`].
//!
//! `cargo test --test fuzz_readers` runs a short pass (2000 inputs per format). For a long run:
//! `TCH_PRUNE_FUZZ_INPUTS=100000 TCH_PRUNE_FUZZ_SEED=7 cargo test --release --test fuzz_readers -- --nocapture`
//! (each format gets that many inputs; the seed varies the mutations).

mod common;

use std::io::{Cursor, Read, Write};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{
    check_torchscript_code_from, read_safetensors, read_torch_zip_from,
    read_torchscript_state_from, write_safetensors, write_torch_zip, CheckpointError, MappedPt2,
    MappedSafetensors, MappedTorchSave, Pt2Archive,
};

/// The peak resident memory of this test process (libtorch's own, about 100 MiB, included).
const MEMORY_CEILING_MIB: u64 = 1024;
/// No input may take longer than this.
const SLOWEST: Duration = Duration::from_secs(5);

/// xorshift64*: seeded, reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that break size and offset arithmetic, written little-endian.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    1 << 40,
];

/// One to four random mutations of `data`.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, donor: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = [0, 0xff, 0x7f, 0x80, b'(', b')', b'.', b'}'][rng.below(8)];
            }
            2 if len >= 8 => {
                let width = [1, 2, 4, 8][rng.below(4)];
                let i = rng.below(len - width + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                data[i..i + width].copy_from_slice(&v[..width]);
            }
            3 => data.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let (a, b) = (a.min(b), a.max(b).min(a + 64));
                data.drain(a..b);
            }
            5 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(32);
                let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, fill);
            }
            6 if !donor.is_empty() => {
                // A piece of another valid file of the format, somewhere.
                let a = rng.below(donor.len());
                let b = (a + 1 + rng.below(256)).min(donor.len());
                let i = rng.below(len + 1);
                data.splice(i..i, donor[a..b].iter().copied());
            }
            _ if len > 1 => {
                // Repeats a piece in place (duplicated opcodes, records).
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece = data[a..b].to_vec();
                data.splice(a..a, piece);
            }
            _ => data.push(rng.next() as u8),
        }
    }
}

/// The entries of a zip, in order.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("a valid seed");
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).expect("entry");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read entry");
            (entry.name().to_string(), data)
        })
        .collect()
}

/// A zip of `entries`, stored, with correct CRCs.
fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        // Duplicate names, which the writer refuses, are the raw mutations' business.
        if out.start_file(name.as_str(), options).is_ok() {
            out.write_all(data).expect("write entry");
        }
    }
    out.finish().expect("finish zip").into_inner()
}

/// A mutated copy of a zip seed: half the time raw bytes, else one entry's contents (preferring
/// `data.pkl`, code and JSON) with the archive rebuilt around it.
fn mutate_zip(rng: &mut Rng, seed: &[u8], entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    if rng.below(2) == 0 {
        let mut data = seed.to_vec();
        mutate(rng, &mut data, seed);
        return data;
    }
    let mut entries = entries.to_vec();
    let preferred: Vec<usize> = (0..entries.len())
        .filter(|&i| {
            let name = &entries[i].0;
            name.ends_with("data.pkl") || name.ends_with(".py") || name.ends_with(".json")
        })
        .collect();
    let i = if !preferred.is_empty() && rng.below(4) != 0 {
        preferred[rng.below(preferred.len())]
    } else {
        rng.below(entries.len())
    };
    let donor = entries[rng.below(entries.len())].1.clone();
    mutate(rng, &mut entries[i].1, &donor);
    rezip(&entries)
}

/// The central directory records of a zip written by [`rezip`] (no comments, no zip64): the
/// offset of each, and of the end record.
fn central_records(zip: &[u8]) -> (Vec<usize>, usize) {
    let le16 = |at: usize| usize::from(u16::from_le_bytes([zip[at], zip[at + 1]]));
    let end = zip.len() - 22;
    let mut at = u32::from_le_bytes(zip[end + 16..end + 20].try_into().expect("4")) as usize;
    let mut records = Vec::new();
    while at < end {
        records.push(at);
        at += 46 + le16(at + 28) + le16(at + 30) + le16(at + 32);
    }
    (records, end)
}

/// Issue 20's mutations of the directory, where readers differ (see `zip_entries`): an entry
/// renamed by an Info-ZIP Unicode Path extra field (0x7075, valid CRC: the zip crate honours
/// it, miniz does not), the UTF-8 flag set over invalid UTF-8, or cleared over a non-ASCII byte
/// (decoded as code page 437 by the zip crate). Whether an entry was renamed (such an input
/// must be refused).
fn mutate_directory(rng: &mut Rng, zip: &mut Vec<u8>) -> bool {
    let (records, end) = central_records(zip);
    let record = records[rng.below(records.len())];
    let name_len = usize::from(u16::from_le_bytes([zip[record + 28], zip[record + 29]]));
    let name = zip[record + 46..record + 46 + name_len].to_vec();
    match rng.below(3) {
        0 => {
            let mut shown = name.clone();
            shown.push(b'x');
            let mut field = vec![0x75, 0x70];
            field.extend_from_slice(&(5 + shown.len() as u16).to_le_bytes());
            field.push(1);
            field.extend_from_slice(&crc32fast::hash(&name).to_le_bytes());
            field.extend_from_slice(&shown);
            let extra_len = u16::from_le_bytes([zip[record + 30], zip[record + 31]]);
            zip[record + 30..record + 32]
                .copy_from_slice(&(extra_len + field.len() as u16).to_le_bytes());
            let at = record + 46 + name_len + usize::from(extra_len);
            zip.splice(at..at, field.iter().copied());
            let cd_len = u32::from_le_bytes(
                zip[end + field.len() + 12..end + field.len() + 16]
                    .try_into()
                    .expect("4"),
            );
            let end = end + field.len();
            zip[end + 12..end + 16].copy_from_slice(&(cd_len + field.len() as u32).to_le_bytes());
            true
        }
        flip => {
            // Bit 11 of the flags: the name is UTF-8.
            if flip == 1 {
                zip[record + 9] |= 0x08;
            } else {
                zip[record + 9] &= !0x08;
            }
            if name_len > 0 {
                zip[record + 46 + rng.below(name_len)] = if flip == 1 { 0xff } else { 0x80 };
            }
            false
        }
    }
}

/// Reads one input, checking the outcome: a result, or a one-line error naming the file.
fn check<T>(
    what: &str,
    input: &[u8],
    result: std::thread::Result<Result<T, CheckpointError>>,
    took: Duration,
) {
    let saved = || {
        let path = std::env::temp_dir().join(format!("tch-prune-fuzz-failure-{what}.bin"));
        let _ = std::fs::write(&path, input);
        path.display().to_string()
    };
    match result {
        Err(_) => panic!("{what}: the reader panicked; input saved as {}", saved()),
        Ok(Err(e)) => {
            let message = e.to_string();
            // Readers of paths name the file by its full path.
            assert!(
                !message.contains('\n')
                    && (message.starts_with("fuzzed") || message.contains("/fuzzed-mapped.pt")),
                "{what}: bad error line {message:?}; input saved as {}",
                saved()
            );
        }
        Ok(Ok(_)) => {}
    }
    assert!(
        took < SLOWEST,
        "{what}: one input took {took:?}; saved as {}",
        saved()
    );
}

/// The peak resident memory of this process so far, in MiB.
fn peak_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn inputs() -> usize {
    std::env::var("TCH_PRUNE_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn seed() -> u64 {
    std::env::var("TCH_PRUNE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A small state dict of several dtypes, one tensor a view of another's storage.
fn state_dict() -> Vec<(String, Tensor)> {
    let _lock = common::generator();
    tch::manual_seed(11);
    let w = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
    vec![
        ("fc.weight".into(), w.shallow_clone()),
        (
            "fc.bias".into(),
            Tensor::randn([6], (Kind::Half, Device::Cpu)),
        ),
        ("fc.weight_t".into(), w.tr()),
        ("bn.num_batches_tracked".into(), Tensor::from(7i64)),
        (
            "mask".into(),
            Tensor::ones([3, 2], (Kind::Bool, Device::Cpu)),
        ),
    ]
}

/// A small TorchScript module written by PyTorch, or None without it.
fn torchscript_seed() -> Vec<u8> {
    let dir = common::tempdir();
    let pt = dir.path().join("seed.pt");
    let script = r#"
import sys, torch
torch.manual_seed(0)
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.bn = torch.nn.BatchNorm2d(2)
        self.fc = torch.nn.Linear(2, 2, bias=False)
    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))
torch.jit.save(torch.jit.script(M()), sys.argv[1])
"#;
    common::run_python(script, &[&pt])
        .expect("the TorchScript seed needs PyTorch: set TCH_PRUNE_PYTHON (make test does)");
    std::fs::read(&pt).expect("read seed")
}

/// A small `torch.export` archive written by PyTorch: parameters, buffers (an int64 one), a tied
/// weight and a constant.
fn pt2_seed() -> Vec<u8> {
    let dir = common::tempdir();
    let pt2 = dir.path().join("seed.pt2");
    let script = r#"
import sys, torch
torch.manual_seed(0)
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(6, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.out = torch.nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
    def forward(self, x):
        return self.out(self.bn(self.emb(x).mean(1))) * self.scale
m = M().eval()
torch.export.save(torch.export.export(m, (torch.tensor([[1, 2], [3, 4]]),)), sys.argv[1])
"#;
    common::run_python(script, &[&pt2])
        .expect("the .pt2 seed needs PyTorch: set TCH_PRUNE_PYTHON (make test does)");
    std::fs::read(&pt2).expect("read seed")
}

fn run_zip_format(
    what: &str,
    seed_bytes: &[u8],
    read: impl Fn(&[u8]) -> std::thread::Result<Result<usize, CheckpointError>>,
) -> (usize, Duration) {
    let entries = unzip(seed_bytes);
    let mut rng = Rng(seed() ^ 0x9e37_79b9_7f4a_7c15 ^ what.len() as u64);
    let start = Instant::now();
    let mut accepted = 0;
    for _ in 0..inputs() {
        let mut input = mutate_zip(&mut rng, seed_bytes, &entries);
        // A quarter of the inputs: the directory's names (issue 20), on a well-formed zip.
        let mut renamed = false;
        if rng.below(4) == 0 {
            input = rezip(&entries);
            renamed = mutate_directory(&mut rng, &mut input);
        }
        let t = Instant::now();
        let result = read(&input);
        assert!(
            !(renamed && matches!(result, Ok(Ok(_)))),
            "{what}: an entry renamed by a Unicode Path field was read"
        );
        if matches!(result, Ok(Ok(_))) {
            accepted += 1;
        }
        check(what, &input, result, t.elapsed());
    }
    (accepted, start.elapsed())
}

#[test]
fn mutated_files_are_read_or_refused_within_bounds() {
    let dir = common::tempdir();
    let zip_path = dir.path().join("seed.pt");
    write_torch_zip(&zip_path, &state_dict()).expect("write the torch.save seed");
    let zip_seed = std::fs::read(&zip_path).expect("read");
    let st_path = dir.path().join("seed.safetensors");
    write_safetensors(&st_path, &state_dict()).expect("write the safetensors seed");
    let st_seed = std::fs::read(&st_path).expect("read");
    let ts_seed = torchscript_seed();

    let quiet = |f: &dyn Fn() -> Result<usize, CheckpointError>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
    };
    let mut report = Vec::new();

    let (ok, took) = run_zip_format("torch.save zip", &zip_seed, |data| {
        quiet(&|| read_torch_zip_from(Cursor::new(data), "fuzzed.pt").map(|sd| sd.len()))
    });
    report.push(format!(
        "torch.save zip: {} inputs, {ok} read, {took:.1?}",
        inputs()
    ));

    // The mapped reader maps a file: each input is written to one. Every tensor's bytes are
    // read back, so a range outside the mapping would panic here.
    let mapped = dir.path().join("fuzzed-mapped.pt");
    let (ok, took) = run_zip_format("mapped torch.save zip", &zip_seed, |data| {
        std::fs::write(&mapped, data).expect("write input");
        quiet(&|| {
            let file = MappedTorchSave::open(&mapped)?;
            Ok(file
                .tensors()
                .iter()
                .map(|t| file.bytes(t).iter().map(|&b| usize::from(b)).sum::<usize>())
                .sum())
        })
    });
    report.push(format!(
        "mapped torch.save zip: {} inputs, {ok} read, {took:.1?}",
        inputs()
    ));

    let (ok, took) = run_zip_format("TorchScript", &ts_seed, |data| {
        quiet(&|| {
            check_torchscript_code_from(Cursor::new(data), "fuzzed.pt")?;
            read_torchscript_state_from(Cursor::new(data), "fuzzed.pt").map(|sd| sd.len())
        })
    });
    report.push(format!(
        "TorchScript: {} inputs, {ok} read, {took:.1?}",
        inputs()
    ));

    // A .pt2 is read from a path, mapped (the streaming path's reader) and read. What is read is
    // written back (every other entry copied) and read again: the same tensors.
    let pt2_seed = pt2_seed();
    let pt2 = dir.path().join("fuzzed-mapped.pt");
    let pt2_out = dir.path().join("fuzzed-out.pt2");
    let (ok, took) = run_zip_format(".pt2", &pt2_seed, |data| {
        std::fs::write(&pt2, data).expect("write input");
        quiet(&|| {
            // The streaming path's reader: every tensor's mapped bytes are read (a range outside
            // the map would panic), and where it maps every tensor, they are the bytes read.
            let mapped = MappedPt2::open(&pt2);
            if let Ok(m) = &mapped {
                for t in m.tensors() {
                    std::hint::black_box(m.bytes(t).iter().map(|&b| usize::from(b)).sum::<usize>());
                }
            }
            let (archive, tensors) = Pt2Archive::read(&pt2)?;
            if let Ok(m) = &mapped {
                if m.unmappable().is_none() {
                    // Bools as stored (any nonzero byte) and as read (normalised) differ.
                    let plain = m
                        .tensors()
                        .iter()
                        .zip(&tensors)
                        .filter(|(t, _)| t.kind != Kind::Bool);
                    for (t, (name, read)) in plain {
                        let mut bytes = vec![0u8; t.byte_len()];
                        read.contiguous().copy_data_u8(&mut bytes, read.numel());
                        assert!(
                            &t.name == name && m.bytes(t) == bytes,
                            "'{name}' mapped differently"
                        );
                    }
                }
            }
            // What was read must be written: a failure here is a bug, not a refusal.
            if let Err(e) = archive.write(&pt2_out, &tensors) {
                panic!("a .pt2 read but not written back: {e}");
            }
            let (_, again) = Pt2Archive::read(&pt2_out).expect("the written .pt2 reads");
            assert_eq!(tensors.len(), again.len());
            for ((n, a), (m, b)) in tensors.iter().zip(&again) {
                // NaN included: the bytes must be the same.
                let bits = |t: &Tensor| match t.kind() {
                    Kind::Float => t.view_dtype(Kind::Int),
                    Kind::Double => t.view_dtype(Kind::Int64),
                    Kind::Half | Kind::BFloat16 => t.view_dtype(Kind::Int16),
                    _ => t.shallow_clone(),
                };
                assert!(
                    n == m && bits(a).equal(&bits(b)),
                    "'{n}' read back differently"
                );
            }
            Ok(tensors.len())
        })
    });
    report.push(format!(".pt2: {} inputs, {ok} read, {took:.1?}", inputs()));

    // safetensors is read from a path: each input is written to one file.
    let fuzzed = dir.path().join("fuzzed.safetensors");
    let mut rng = Rng(seed() ^ 0x5851_f42d_4c95_7f2d);
    let header_len = u64::from_le_bytes(st_seed[..8].try_into().expect("8 bytes")) as usize;
    let start = Instant::now();
    let mut ok = 0;
    for _ in 0..inputs() {
        let mut input = st_seed.clone();
        if rng.below(2) == 0 {
            mutate(&mut rng, &mut input, &st_seed);
        } else {
            // The header's JSON, its length field kept right.
            let mut header = input[8..8 + header_len].to_vec();
            mutate(&mut rng, &mut header, &st_seed[8..8 + header_len]);
            let mut rebuilt = (header.len() as u64).to_le_bytes().to_vec();
            rebuilt.extend_from_slice(&header);
            rebuilt.extend_from_slice(&input[8 + header_len..]);
            input = rebuilt;
        }
        std::fs::write(&fuzzed, &input).expect("write input");
        let t = Instant::now();
        let result = quiet(&|| read_safetensors(&fuzzed).map(|sd| sd.len()));
        ok += usize::from(matches!(result, Ok(Ok(_))));
        match &result {
            // Errors name the file by its full path here.
            Ok(Err(e)) => {
                let text = e.to_string();
                assert!(
                    !text.contains('\n') && text.contains("fuzzed.safetensors"),
                    "{text}"
                );
            }
            Err(_) => panic!("safetensors: the reader panicked on {}", fuzzed.display()),
            Ok(Ok(_)) => {}
        }
        assert!(
            t.elapsed() < SLOWEST,
            "safetensors: one input took {:?}",
            t.elapsed()
        );
    }
    report.push(format!(
        "safetensors: {} inputs, {ok} read, {:.1?}",
        inputs(),
        start.elapsed()
    ));

    let peak = peak_mib();
    report.push(format!("peak resident memory {peak} MiB"));
    eprintln!("fuzz (seed {}): {}", seed(), report.join("; "));
    assert!(
        peak <= MEMORY_CEILING_MIB,
        "peak memory {peak} MiB, over {MEMORY_CEILING_MIB} MiB"
    );
}

/// Issue 20: the mapped readers on files that change size while they are read (cut at a random
/// byte, or grown), after the map is made: every tensor's bytes are read (a cut reads zeros
/// past the new end instead of ending the process by `SIGBUS`), and `unchanged` then fails on
/// one line naming the file. Tensors of several pages, so that cuts land on whole pages.
#[test]
fn mapped_files_that_change_size_are_reported() {
    let dir = common::tempdir();
    let tensors = || {
        let _lock = common::generator();
        tch::manual_seed(5);
        vec![
            (
                "a.weight".to_string(),
                Tensor::randn([64, 256], (Kind::Float, Device::Cpu)),
            ),
            (
                "b.weight".to_string(),
                Tensor::randn([128, 128], (Kind::Half, Device::Cpu)),
            ),
        ]
    };
    let st_seed = dir.path().join("seed.safetensors");
    write_safetensors(&st_seed, &tensors()).expect("write the safetensors seed");
    let zip_seed = dir.path().join("seed.pt");
    write_torch_zip(&zip_seed, &tensors()).expect("write the torch.save seed");
    let mut rng = Rng(seed() ^ 0x2545_f491_4f6c_dd1d);
    let runs = (inputs() / 10).max(50);
    for i in 0..runs {
        let (seed_path, path) = match i % 2 {
            0 => (&st_seed, dir.path().join("changing.safetensors")),
            _ => (&zip_seed, dir.path().join("changing.pt")),
        };
        let bytes = std::fs::read(seed_path).expect("read seed");
        std::fs::write(&path, &bytes).expect("write input");
        let sum = |slices: Vec<&[u8]>| -> usize {
            slices
                .iter()
                .map(|b| b.iter().map(|&x| usize::from(x)).sum::<usize>())
                .sum()
        };
        let change = |rng: &mut Rng| {
            let file = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("open");
            let len = match rng.below(4) {
                0 => bytes.len() as u64 + 1 + rng.below(1 << 16) as u64,
                _ => rng.below(bytes.len()) as u64,
            };
            file.set_len(len).expect("change the size");
        };
        let outcome = if i % 2 == 0 {
            let file = MappedSafetensors::open(&path).expect("the seed maps");
            change(&mut rng);
            let _ =
                std::hint::black_box(sum(file.tensors().iter().map(|t| file.bytes(t)).collect()));
            file.unchanged()
        } else {
            let file = MappedTorchSave::open(&path).expect("the seed maps");
            change(&mut rng);
            let _ =
                std::hint::black_box(sum(file.tensors().iter().map(|t| file.bytes(t)).collect()));
            // The CRCs of what was read (zeros past a cut) fail or not: no panic either way.
            let _ = file.tensors().iter().try_for_each(|t| file.check(t));
            file.unchanged()
        };
        let text = outcome.expect_err("a file that changed size").to_string();
        assert!(
            !text.contains('\n') && text.contains(&path.display().to_string()),
            "{text}"
        );
        assert!(text.contains("changed size"), "{text}");
    }
}
