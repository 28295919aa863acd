//! The virtual machine on real and mutated pickles: nothing a file holds makes it panic,
//! recurse without bound or call a global.

use super::*;
use crate::checkpoint::archive::StorageSource;
use std::path::PathBuf;

/// Serves every storage as the byte pattern 0, 1, 2, ... so views of it are recognisable.
pub(in crate::checkpoint) struct PatternStorages;

impl StorageSource for PatternStorages {
    fn load(&mut self, key: &str, nbytes: u64) -> Result<Option<Tensor>, CheckpointError> {
        // Mutated pickles declare arbitrary sizes: refuse the absurd ones, as the zip reader
        // does for sizes its entries do not have.
        if nbytes > 1 << 20 {
            return Err(CheckpointError::CorruptArchive {
                path: PathBuf::from("test"),
                reason: format!("storage {key} too large"),
            });
        }
        Ok(Some(Tensor::from_slice(
            &(0..nbytes).map(|i| i as u8).collect::<Vec<u8>>(),
        )))
    }
}

/// Runs a state dict pickle against [`PatternStorages`].
pub(in crate::checkpoint) fn unpickle(
    data: &[u8],
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = Path::new("data.pkl");
    let mut storages = PatternStorages;
    let mut vm = Unpickler::new(data, path, &mut storages);
    let root = vm.run()?;
    vm.into_state_dict(root)
}

/// `torch.save(sd, p, pickle_protocol=2)` of the state dict of
/// `Sequential(Linear(2, 1), BatchNorm1d(1))` plus `sd["t"] = torch.arange(6.).reshape(2, 3).t()`.
const PROTO2: &[u8] = b"\
    \x80\x02ccollections\x0aOrderedDict\x0aq\x00\x29Rq\
    \x01\x28X\x08\x00\x00\x000.weightq\x02ctorch._utils\x0a_\
    rebuild_tensor_v2\x0aq\x03\x28\x28X\x07\x00\x00\x00stora\
    geq\x04ctorch\x0aFloatStorage\x0aq\x05X\x01\x00\x00\x000\
    q\x06X\x03\x00\x00\x00cpuq\x07K\x02tq\x08QK\x00K\x01K\x02\x86q\x09K\x02K\x01\x86\
    q\x0a\x89h\x00\x29Rq\x0btq\x0cRq\x0dX\x06\x00\x00\x000.biasq\x0eh\x03\x28\x28\
    h\x04h\x05X\x01\x00\x00\x001q\x0fh\x07K\x01tq\x10QK\x00K\x01\x85q\x11K\x01\x85q\x12\
    \x89h\x00\x29Rq\x13tq\x14Rq\x15X\x08\x00\x00\x001.weightq\x16h\x03\x28\x28\
    h\x04h\x05X\x01\x00\x00\x002q\x17h\x07K\x01tq\x18QK\x00K\x01\x85q\x19K\x01\x85q\x1a\
    \x89h\x00\x29Rq\x1btq\x1cRq\x1dX\x06\x00\x00\x001.biasq\x1eh\x03\x28\x28h\x04\
    h\x05X\x01\x00\x00\x003q\x1fh\x07K\x01tq\x20QK\x00K\x01\x85q\x21K\x01\x85q\x22\x89h\
    \x00\x29Rq\x23tq\x24Rq\x25X\x0e\x00\x00\x001.running_meanq\x26\
    h\x03\x28\x28h\x04h\x05X\x01\x00\x00\x004q\x27h\x07K\x01tq\x28QK\x00K\x01\x85q\x29K\
    \x01\x85q\x2a\x89h\x00\x29Rq\x2btq\x2cRq\x2dX\x0d\x00\x00\x001.running_\
    varq.h\x03\x28\x28h\x04h\x05X\x01\x00\x00\x005q\x2fh\x07K\x01tq0QK\x00K\
    \x01\x85q1K\x01\x85q2\x89h\x00\x29Rq3tq4Rq5X\x15\x00\x00\x001.num\
    _batches_trackedq6h\x03\x28\x28h\x04ctorch\x0aL\
    ongStorage\x0aq7X\x01\x00\x00\x006q8h\x07K\x01tq9QK\x00\x29\
    \x29\x89h\x00\x29Rq\x3atq\x3bRq\x3cX\x01\x00\x00\x00tq\x3dh\x03\x28\x28h\x04h\x05X\x01\
    \x00\x00\x007q\x3eh\x07K\x06tq\x3fQK\x00K\x03K\x02\x86q\x40K\x01K\x03\x86qA\x89h\
    \x00\x29RqBtqCRqDu\x7dqEX\x09\x00\x00\x00_metadataqFh\
    \x00\x29RqG\x28X\x00\x00\x00\x00qH\x7dqIX\x07\x00\x00\x00versionqJK\x01\
    sX\x01\x00\x00\x000qK\x7dqLhJK\x01sX\x01\x00\x00\x001qM\x7dqNhJK\x02\
    susb.\
    ";
/// `torch.save(sd, p, pickle_protocol=4)` of the state dict of
/// `Sequential(Linear(2, 1), BatchNorm1d(1))` plus `sd["t"] = torch.arange(6.).reshape(2, 3).t()`.
const PROTO4: &[u8] = b"\
    \x80\x04\x95Y\x02\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrder\
    edDict\x94\x93\x94\x29R\x94\x28\x8c\x080.weight\x94\x8c\x0ctorch.\
    _utils\x94\x8c\x12_rebuild_tensor_v2\x94\x93\x94\x28\x28\
    \x8c\x07storage\x94\x8c\x05torch\x94\x8c\x0cFloatStorage\
    \x94\x93\x94\x8c\x010\x94\x8c\x03cpu\x94K\x02t\x94QK\x00K\x01K\x02\x86\x94K\x02K\x01\x86\x94\
    \x89h\x02\x29R\x94t\x94R\x94\x8c\x060.bias\x94h\x07\x28\x28h\x08h\x0b\x8c\x011\x94h\
    \x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x081.we\
    ight\x94h\x07\x28\x28h\x08h\x0b\x8c\x012\x94h\x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\
    \x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x061.bias\x94h\x07\x28\x28h\x08h\x0b\x8c\x013\
    \x94h\x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x0e1.\
    running_mean\x94h\x07\x28\x28h\x08h\x0b\x8c\x014\x94h\x0dK\x01t\x94Q\
    K\x00K\x01\x85\x94K\x01\x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x0d1.running_\
    var\x94h\x07\x28\x28h\x08h\x0b\x8c\x015\x94h\x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\x85\
    \x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x151.num_batches_track\
    ed\x94h\x07\x28\x28h\x08h\x09\x8c\x0bLongStorage\x94\x93\x94\x8c\x016\x94h\
    \x0dK\x01t\x94QK\x00\x29\x29\x89h\x02\x29R\x94t\x94R\x94\x8c\x01t\x94h\x07\x28\x28h\x08h\x0b\
    \x8c\x017\x94h\x0dK\x06t\x94QK\x00K\x03K\x02\x86\x94K\x01K\x03\x86\x94\x89h\x02\x29R\x94t\
    \x94R\x94u\x7d\x94\x8c\x09_metadata\x94h\x02\x29R\x94\x28\x8c\x00\x94\x7d\x94\x8c\x07v\
    ersion\x94K\x01s\x8c\x010\x94\x7d\x94hQK\x01s\x8c\x011\x94\x7d\x94hQK\x02s\
    usb.\
    ";

const KEYS: [&str; 8] = [
    "0.weight",
    "0.bias",
    "1.weight",
    "1.bias",
    "1.running_mean",
    "1.running_var",
    "1.num_batches_tracked",
    "t",
];

#[test]
fn reads_real_pickles_of_both_protocols() {
    for pickle in [PROTO2, PROTO4] {
        let sd = unpickle(pickle).expect("a valid state dict");
        let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, KEYS);
        assert_eq!(sd[0].1.size(), [1, 2]);
        assert_eq!(sd[6].1.kind(), Kind::Int64);
        assert_eq!(sd[6].1.size(), Vec::<i64>::new());
        let bytes: Vec<u8> = (0..24).collect();
        let expected = Tensor::f_from_data_size(&bytes, &[2, 3], Kind::Float)
            .and_then(|t| t.tr().f_contiguous())
            .expect("reference");
        let t = &sd[7].1;
        assert_eq!(t.size(), [3, 2]);
        assert!(t.is_contiguous());
        assert!(t.equal(&expected), "{t} vs {expected}");
    }
}

#[test]
fn every_prefix_of_a_pickle_is_an_error_not_a_panic() {
    for pickle in [PROTO2, PROTO4] {
        for len in 0..pickle.len() {
            let err = unpickle(&pickle[..len]).expect_err("a truncated pickle must fail");
            let message = err.to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(message.starts_with("data.pkl: "), "{message}");
        }
    }
}

#[test]
fn byte_flips_never_panic() {
    for pickle in [PROTO2, PROTO4] {
        let mut ok = 0;
        for i in 0..pickle.len() {
            for mask in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
                let mut mutated = pickle.to_vec();
                mutated[i] ^= mask;
                match unpickle(&mutated) {
                    Ok(_) => ok += 1,
                    Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
                }
            }
        }
        // Flips inside names or values still give a state dict: the test did reach the
        // end of the pickle with mutated input, not only its first opcodes.
        assert!(ok > 0);
    }
}

#[test]
fn deep_nesting_and_cycles_do_not_recurse() {
    // A million nested 1-tuples: a recursive drop would overflow the stack.
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85, 1_000_000));
    deep.push(b'.');
    let err = unpickle(&deep).expect_err("a tuple is not a state dict");
    assert!(err.to_string().contains("holds a tuple"), "{err}");

    // A list that contains itself.
    let err = unpickle(b"\x80\x02]q\x00h\x00a.").expect_err("a list is not a state dict");
    assert!(err.to_string().contains("holds a list"), "{err}");
}

#[test]
fn forbidden_globals_are_named_not_called() {
    let err = unpickle(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.").expect_err("refused");
    assert!(
        matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global == "os.system"),
        "{err}"
    );
    let err = unpickle(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").expect_err("refused");
    assert!(err.to_string().contains("`builtins.eval`"), "{err}");
    // A storage type name is allowed, but never callable.
    let err = unpickle(b"\x80\x02ctorch\nFloatStorage\n)R.").expect_err("refused");
    assert!(err.to_string().contains("cannot call"), "{err}");
    // TorchScript classes and helpers are only known in TorchScript mode.
    let err = unpickle(b"\x80\x02c__torch__\nNet\n)\x81}b.").expect_err("refused");
    assert!(err.to_string().contains("`__torch__.Net`"), "{err}");
    let err = unpickle(b"\x80\x02ctorch.jit._pickle\nbuild_intlist\n.").expect_err("refused");
    assert!(
        err.to_string()
            .contains("`torch.jit._pickle.build_intlist`"),
        "{err}"
    );
}

#[test]
fn names_from_the_pickle_cannot_break_the_message_line() {
    let err = unpickle(b"\x80\x04\x8c\x03a\nb\x8c\x03c\nd\x93.").expect_err("refused");
    assert!(err.to_string().contains("`a\\nb.c\\nd`"), "{err}");
    let err = unpickle(b"\x80\x02}X\x04\x00\x00\x00k\ney\x4b\x01s.").expect_err("an int value");
    assert!(err.to_string().contains("'k\\ney' is an int"), "{err}");
}

#[test]
fn unsupported_opcodes_and_protocols_are_errors() {
    let err = unpickle(b"\x80\x02I1\n.").expect_err("protocol 0 INT");
    assert!(err.to_string().contains("opcode 0x49 (INT)"), "{err}");
    let err = unpickle(b"\x80\x06}.").expect_err("protocol 6");
    assert!(err.to_string().contains("protocol 6"), "{err}");
    let err = unpickle(b"\x80\x02h\x05.").expect_err("memo miss");
    assert!(err.to_string().contains("memo entry 5"), "{err}");
    let err = unpickle(b"\x80\x02(.").expect_err("STOP at a mark");
    assert!(err.to_string().contains("stack underflow"), "{err}");
}

#[test]
fn sparse_memo_indices_and_empty_dicts() {
    let sd =
        unpickle(b"\x80\x02}r\xff\xff\xff\xff.").expect("an empty dict is an empty state dict");
    assert!(sd.is_empty());
}

#[test]
fn dict_setitem_replaces_in_place() {
    let mut dict = Dict::default();
    dict.insert(Value::Str("a".into()), Value::Int(1));
    dict.insert(Value::Str("b".into()), Value::Int(2));
    dict.insert(Value::Str("a".into()), Value::Int(3));
    let entries: Vec<(String, i64)> = dict
        .entries
        .iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Int(v)) => (k.to_string(), *v),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(entries, [("a".to_string(), 3), ("b".to_string(), 2)]);
}

#[test]
fn longs_decode_with_sign_and_width() {
    let int = |bytes: &[u8]| match decode_long(bytes) {
        Value::Int(v) => Some(v),
        _ => None,
    };
    assert_eq!(int(&[]), Some(0));
    assert_eq!(int(&[0xff]), Some(-1));
    assert_eq!(int(&[0x80, 0x00]), Some(128));
    assert_eq!(int(&i64::MIN.to_le_bytes()), Some(i64::MIN));
    assert_eq!(
        int(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00]),
        Some(i64::MAX)
    );
    assert_eq!(int(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0x00]), None);
    assert_eq!(int(&[0, 0, 0, 0, 0, 0, 0, 0, 0x01]), None);
}
