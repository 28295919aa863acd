//! What the readers refuse, table by table: each row a file, the readers that must refuse it, the
//! error variant and what its one-line message must say (always naming the file). Legacy,
//! truncated, foreign and damaged files come from the committed fixtures (no Python needed);
//! custom classes, non-dicts and unsupported dtypes from tests/py/formats/rejected_files.py.
//! Also: truncations and byte flips never panic, and refused writes leave nothing behind.

use crate::common;
use crate::formats;

use formats::*;
use std::io::{Cursor, Write};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{
    read_safetensors, read_state_dict, read_torch_zip, read_torch_zip_from, read_torchscript_state,
    read_torchscript_state_from, write_safetensors, write_torch_zip, CheckpointError, Format,
    MappedTorchSave,
};

/// The readers a row of a table calls.
#[derive(Clone, Copy, Debug)]
enum Reader {
    TorchZip,
    /// `MappedTorchSave`, the streaming path's reader: the same refusals as `read_torch_zip`.
    MappedZip,
    StateDict,
    Detect,
    Safetensors,
    TorchScript,
}
use Reader::*;

impl Reader {
    fn read(self, path: &Path) -> Result<(), CheckpointError> {
        match self {
            TorchZip => read_torch_zip(path).map(drop),
            MappedZip => MappedTorchSave::open(path).map(drop),
            StateDict => read_state_dict(path).map(drop),
            Detect => Format::detect(path).map(drop),
            Safetensors => read_safetensors(path).map(drop),
            TorchScript => read_torchscript_state(path).map(drop),
        }
    }
}

/// One refused file: every reader of `readers` fails on `file` with an error for which
/// `variant` holds, in one line that names the file and says `needle`.
struct Rejection {
    file: &'static str,
    readers: &'static [Reader],
    variant: fn(&CheckpointError) -> bool,
    needle: &'static str,
}

fn any(_: &CheckpointError) -> bool {
    true
}

fn check(dir: &Path, rows: &[Rejection]) {
    for row in rows {
        let file = dir.join(row.file);
        for reader in row.readers {
            let err = match reader.read(&file) {
                Ok(()) => panic!("{reader:?} accepted {}", row.file),
                Err(e) => e,
            };
            assert!((row.variant)(&err), "{reader:?} on {}: {err:?}", row.file);
            assert_error(&err, &file, row.needle);
        }
    }
}

#[test]
fn rejects_legacy_truncated_and_foreign_files() {
    let dir = common::tempdir();
    let at = |name: &str| dir.path().join(name);
    std::fs::copy(fixture("legacy.pt"), at("legacy.pt")).expect("copy");
    let pt = std::fs::read(fixture("mlp.pt")).expect("read");
    std::fs::write(at("half.pt"), &pt[..pt.len() / 2]).expect("write");
    let st = std::fs::read(fixture("mlp.safetensors")).expect("read");
    std::fs::write(at("half.safetensors"), &st[..st.len() / 2]).expect("write");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert!(noise[0] != b'P' && noise[0] != 0x80);
    std::fs::write(at("noise.bin"), &noise).expect("write");
    std::fs::write(at("empty.pt"), b"").expect("write");
    // A zip that torch.save did not write.
    let mut zip = zip::ZipWriter::new(std::fs::File::create(at("notes.zip")).expect("create"));
    zip.start_file("notes/hello.txt", zip::write::SimpleFileOptions::default())
        .expect("start");
    zip.write_all(b"hello").expect("write");
    zip.finish().expect("finish");
    std::fs::copy(fixture("tiny_script.pt"), at("scripted.pt")).expect("copy");
    assert_eq!(
        Format::detect(at("scripted.pt")).expect("detect"),
        Format::TorchScript
    );

    check(
        dir.path(),
        &[
            Rejection {
                file: "legacy.pt",
                readers: &[TorchZip, MappedZip, StateDict, Detect],
                variant: |e| matches!(e, CheckpointError::LegacyFormat { .. }),
                needle: "_use_new_zipfile_serialization=True",
            },
            Rejection {
                file: "half.pt",
                readers: &[TorchZip, MappedZip, StateDict],
                variant: |e| matches!(e, CheckpointError::CorruptArchive { .. }),
                needle: "corrupt or truncated",
            },
            Rejection {
                file: "half.safetensors",
                readers: &[Safetensors],
                variant: any,
                needle: "truncated",
            },
            Rejection {
                file: "noise.bin",
                readers: &[StateDict],
                variant: |e| matches!(e, CheckpointError::UnknownFormat { .. }),
                needle: "unrecognized file format",
            },
            Rejection {
                file: "noise.bin",
                readers: &[TorchZip, MappedZip],
                variant: any,
                needle: "not a zip archive",
            },
            Rejection {
                file: "noise.bin",
                readers: &[Safetensors],
                variant: any,
                needle: "invalid safetensors file",
            },
            Rejection {
                file: "empty.pt",
                readers: &[StateDict],
                variant: any,
                needle: "unrecognized file format",
            },
            Rejection {
                file: "notes.zip",
                readers: &[TorchZip, MappedZip, StateDict, Detect],
                variant: |e| matches!(e, CheckpointError::NotACheckpoint { .. }),
                needle: "no data.pkl",
            },
            Rejection {
                file: "scripted.pt",
                readers: &[StateDict, TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::TorchScript { .. }),
                needle: "TorchScript module saved by torch.jit.save",
            },
        ],
    );
}

#[test]
fn rejects_damaged_archives() {
    let dir = common::tempdir();
    let pt = fixture("mlp.pt");
    /// A copy of the fixture with one entry edited (`None` drops it), and how it is refused.
    struct Damage {
        file: &'static str,
        entry: &'static str,
        edit: fn(Vec<u8>) -> Option<Vec<u8>>,
        variant: fn(&CheckpointError) -> bool,
        needle: &'static str,
    }
    let damages = [
        Damage {
            file: "big_endian.pt",
            entry: "/byteorder",
            edit: |_| Some(b"big".to_vec()),
            variant: |e| matches!(e, CheckpointError::Unsupported { .. }),
            needle: "big-endian",
        },
        Damage {
            file: "short_storage.pt",
            entry: "/data/0",
            edit: |mut bytes| {
                bytes.truncate(bytes.len() - 4);
                Some(bytes)
            },
            variant: |e| matches!(e, CheckpointError::CorruptArchive { .. }),
            needle: "but data.pkl declares",
        },
        Damage {
            file: "missing_storage.pt",
            entry: "/data/1",
            edit: |_| None,
            variant: |e| matches!(e, CheckpointError::CorruptArchive { .. }),
            needle: "has no entry",
        },
        // 2.weight (3x8) declared over storage 1, which 0.bias declared first with 8 elements:
        // a storage declared twice with different sizes is refused before its entry is read
        // (torch.load and torch.jit.load would read it differently; issue 20), so the tensor
        // never reads 64 bytes past it.
        Damage {
            file: "reused_storage.pt",
            entry: "/data.pkl",
            edit: |bytes| {
                let (from, to) = (b"X\x01\x00\x00\x002q\x17", b"X\x01\x00\x00\x001q\x17");
                let at = bytes
                    .windows(from.len())
                    .position(|w| w == from)
                    .expect("2.weight's storage key in data.pkl");
                let mut bytes = bytes;
                bytes[at..at + to.len()].copy_from_slice(to);
                Some(bytes)
            },
            variant: |e| matches!(e, CheckpointError::MalformedPickle { .. }),
            needle: "storage '1' is declared as 8 elements of float32 and again as 24",
        },
        Damage {
            file: "cut_pickle.pt",
            entry: "/data.pkl",
            edit: |bytes| Some(bytes[..bytes.len() - 10].to_vec()),
            variant: |e| matches!(e, CheckpointError::MalformedPickle { .. }),
            needle: "malformed data.pkl at byte",
        },
    ];
    let mut rows = Vec::new();
    for d in damages {
        rewrite_zip(&pt, &dir.path().join(d.file), edit_entry(d.entry, d.edit));
        rows.push(Rejection {
            file: d.file,
            readers: &[TorchZip, MappedZip],
            variant: d.variant,
            needle: d.needle,
        });
    }
    check(dir.path(), &rows);
}

#[test]
fn rejects_custom_classes_non_dicts_and_unsupported_dtypes() {
    let dir = common::tempdir();
    let marker = dir.path().join("pwned");
    let Some(_) = run_py("rejected_files.py", &[dir.path(), &marker]) else {
        return;
    };
    check(
        dir.path(),
        &[
            Rejection {
                file: "custom.pt",
                readers: &[TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::ForbiddenGlobal { global, .. } if global == "__main__.Foo"),
                needle: "`__main__.Foo`",
            },
            // os.system pickles as posix.system on Linux (nt.system on Windows).
            Rejection {
                file: "evil.pt",
                readers: &[TorchZip, MappedZip, StateDict],
                variant: |e| matches!(e, CheckpointError::ForbiddenGlobal { global, .. } if global.ends_with(".system")),
                needle: ".system`",
            },
            Rejection {
                file: "list.pt",
                readers: &[TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::NotAStateDict { .. }),
                needle: "the file holds a list, not a dict of tensors",
            },
            Rejection {
                file: "mixed.pt",
                readers: &[TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::NotAStateDict { .. }),
                needle: "the value of 'b' is an int, not a tensor",
            },
            Rejection {
                file: "tensor.pt",
                readers: &[TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::NotAStateDict { .. }),
                needle: "the file holds a tensor, not a dict of tensors",
            },
            Rejection {
                file: "int_key.pt",
                readers: &[TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::NotAStateDict { .. }),
                needle: "a key that is an int",
            },
            Rejection {
                file: "bad_nested.pt",
                readers: &[TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::NotAStateDict { .. }),
                needle: "the value of 'state_dict.step' is an int, not a tensor",
            },
            Rejection {
                file: "complex.pt",
                readers: &[TorchZip, MappedZip],
                variant: |e| matches!(e, CheckpointError::UnsupportedDtype { tensor, .. } if tensor == "c"),
                needle: "tensor 'c' has dtype torch.ComplexFloatStorage",
            },
            Rejection {
                file: "u16.safetensors",
                readers: &[Safetensors],
                variant: any,
                needle: "tensor 'u' has dtype U16",
            },
        ],
    );
    assert!(!marker.exists(), "the pickle's code ran");
}

#[test]
fn torchscript_reader_rejects_other_formats_and_tampered_archives() {
    let dir = common::tempdir();
    let (pt, state_dict, st) = (
        dir.path().join("scripted.pt"),
        dir.path().join("sd.pt"),
        dir.path().join("sd.safetensors"),
    );
    let Some(_) = run_py("script_and_state_dict.py", &[&pt, &state_dict, &st]) else {
        return;
    };
    assert_eq!(read_torchscript_state(&pt).expect("reads").len(), 4);

    let sequential = b"c__torch__.torch.nn.modules.container\nSequential\n";
    let replace = |bytes: &[u8], by: &[u8]| -> Vec<u8> {
        let at = bytes
            .windows(sequential.len())
            .position(|w| w == sequential)
            .expect("the pickle names the Sequential class");
        [&bytes[..at], by, &bytes[at + sequential.len()..]].concat()
    };
    rewrite_zip(
        &pt,
        &dir.path().join("evil.pt"),
        edit_entry("/data.pkl", |bytes| Some(replace(&bytes, b"cos\nsystem\n"))),
    );
    rewrite_zip(
        &pt,
        &dir.path().join("undefined.pt"),
        edit_entry("/data.pkl", |bytes| {
            Some(replace(
                &bytes,
                b"c__torch__.torch.nn.modules.container\nSequential2\n",
            ))
        }),
    );
    rewrite_zip(
        &pt,
        &dir.path().join("no_linear_code.pt"),
        edit_entry("/code/__torch__/torch/nn/modules/linear.py", |_| None),
    );
    rewrite_zip(
        &pt,
        &dir.path().join("cut.pt"),
        edit_entry("/data.pkl", |bytes| Some(bytes[..bytes.len() / 2].to_vec())),
    );

    check(
        dir.path(),
        &[
            Rejection {
                file: "sd.pt",
                readers: &[TorchScript],
                variant: |e| matches!(e, CheckpointError::WrongFormat { .. }),
                needle: "a torch.save checkpoint (read it with read_state_dict)",
            },
            Rejection {
                file: "sd.safetensors",
                readers: &[TorchScript],
                variant: any,
                needle: "expected a TorchScript archive written by torch.jit.save, but this is a safetensors file",
            },
            Rejection {
                file: "evil.pt",
                readers: &[TorchScript],
                variant: |e| {
                    matches!(e, CheckpointError::ForbiddenGlobal { global, .. } if global == "os.system")
                },
                needle: "`os.system`",
            },
            Rejection {
                file: "undefined.pt",
                readers: &[TorchScript],
                variant: any,
                needle: "data.pkl uses the class __torch__.torch.nn.modules.container.Sequential2 but the archive's code/ does not define it",
            },
            Rejection {
                file: "no_linear_code.pt",
                readers: &[TorchScript],
                variant: any,
                needle: "does not define it",
            },
            Rejection {
                file: "cut.pt",
                readers: &[TorchScript],
                variant: |e| matches!(e, CheckpointError::MalformedPickle { .. }),
                needle: "malformed data.pkl at byte",
            },
        ],
    );
}

#[test]
fn truncations_and_byte_flips_of_a_real_file_never_panic() {
    let bytes = std::fs::read(fixture("tiny.pt")).expect("read");
    assert_fuzzed_safely(&bytes, |data| {
        read_torch_zip_from(Cursor::new(data), "fuzzed.pt")
    });
}

#[test]
fn truncations_and_byte_flips_of_a_torchscript_file_never_panic() {
    let bytes = std::fs::read(fixture("tiny_script.pt")).expect("read");
    let read = |data| read_torchscript_state_from(Cursor::new(data), "fuzzed.pt");
    assert_eq!(read(bytes.clone()).expect("the whole file reads").len(), 2);
    assert_fuzzed_safely(&bytes, read);
}

#[test]
fn failed_writes_leave_the_old_file_and_no_temporary_file() {
    let dir = common::tempdir();
    let st = dir.path().join("model.safetensors");
    std::fs::write(&st, b"previous contents").expect("write");
    let complex = Tensor::zeros([2], (Kind::ComplexFloat, Device::Cpu));
    let tensors = [
        ("ok", Tensor::zeros([2], (Kind::Float, Device::Cpu))),
        ("c", complex),
    ];
    let err = unwrap_err(write_safetensors(&st, &tensors));
    assert_error(&err, &st, "tensor 'c' has dtype ComplexFloat");
    let err = unwrap_err(write_torch_zip(dir.path().join("x.pt"), &tensors));
    assert!(
        matches!(err, CheckpointError::UnsupportedDtype { .. }),
        "{err}"
    );
    let dup = [
        ("a", Tensor::zeros([1], (Kind::Float, Device::Cpu))),
        ("a", Tensor::zeros([1], (Kind::Float, Device::Cpu))),
    ];
    let err = unwrap_err(write_safetensors(&st, &dup));
    assert_error(&err, &st, "given twice");
    // Into a folder that does not exist: fails before anything is written.
    let missing = dir.path().join("no/such/folder/m.safetensors");
    let err = unwrap_err(write_safetensors(&missing, &tensors[..1]));
    assert_error(&err, &missing, "m.safetensors");

    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["model.safetensors"]);
    assert_eq!(std::fs::read(&st).expect("read"), b"previous contents");
}
