//! The one table of the dtypes the file formats read and write: for each, tch's `Kind`,
//! PyTorch's name, the storage class `torch.save` pickles its tensors with, the dtype tag of
//! safetensors, and the `ScalarType` number of `torch.export`'s serialized schema and libtorch's own
//! (`c10::ScalarType`). Every reader and writer looks dtypes up here, so a dtype is supported by all of
//! them or by none.

use safetensors::Dtype;
use tch::Kind;

/// One supported dtype under its names in each format.
#[derive(Debug, Clone, Copy)]
pub(super) struct DType {
    pub(super) kind: Kind,
    /// PyTorch's name (`torch.float32` without `torch.`), used in messages.
    pub(super) name: &'static str,
    /// The `torch.<name>` storage class a `torch.save` pickle names for it.
    pub(super) storage: &'static str,
    pub(super) safetensors: Dtype,
    /// `torch._export.serde.schema.ScalarType`: the `dtype` of a `.pt2` archive's `tensor_meta`.
    pub(super) export: i64,
    /// `c10::ScalarType`: what libtorch's operators take for a dtype argument.
    pub(super) c10: i64,
}

/// The dtypes both formats are read and written in. The list of
/// [`CheckpointError::UnsupportedDtype`](super::CheckpointError::UnsupportedDtype)'s message
/// names the same ones.
pub(super) const DTYPES: [DType; 10] = [
    DType::new(Kind::Float, "float32", "FloatStorage", Dtype::F32, 7, 6),
    DType::new(Kind::Half, "float16", "HalfStorage", Dtype::F16, 6, 5),
    DType::new(
        Kind::BFloat16,
        "bfloat16",
        "BFloat16Storage",
        Dtype::BF16,
        13,
        15,
    ),
    DType::new(Kind::Double, "float64", "DoubleStorage", Dtype::F64, 8, 7),
    DType::new(Kind::Int64, "int64", "LongStorage", Dtype::I64, 5, 4),
    DType::new(Kind::Int, "int32", "IntStorage", Dtype::I32, 4, 3),
    DType::new(Kind::Int16, "int16", "ShortStorage", Dtype::I16, 3, 2),
    DType::new(Kind::Int8, "int8", "CharStorage", Dtype::I8, 2, 1),
    DType::new(Kind::Uint8, "uint8", "ByteStorage", Dtype::U8, 1, 0),
    DType::new(Kind::Bool, "bool", "BoolStorage", Dtype::BOOL, 12, 11),
];

impl DType {
    const fn new(
        kind: Kind,
        name: &'static str,
        storage: &'static str,
        safetensors: Dtype,
        export: i64,
        c10: i64,
    ) -> Self {
        DType {
            kind,
            name,
            storage,
            safetensors,
            export,
            c10,
        }
    }

    /// The row of `kind`, if the formats support it.
    pub(super) fn of(kind: Kind) -> Option<&'static DType> {
        DTYPES.iter().find(|d| d.kind == kind)
    }

    /// The row of a `torch.*Storage` class name. `UntypedStorage` (PyTorch 2's storages) holds
    /// bytes.
    pub(super) fn of_storage(name: &str) -> Option<&'static DType> {
        let name = if name == "UntypedStorage" {
            "ByteStorage"
        } else {
            name
        };
        DTYPES.iter().find(|d| d.storage == name)
    }

    /// The row of a `torch.export` `ScalarType` number.
    pub(super) fn of_export(code: i64) -> Option<&'static DType> {
        DTYPES.iter().find(|d| d.export == code)
    }

    /// The row of a safetensors dtype tag.
    pub(super) fn of_safetensors(dtype: Dtype) -> Option<&'static DType> {
        DTYPES.iter().find(|d| d.safetensors == dtype)
    }
}

/// The `c10::ScalarType` of a `torch.export` `ScalarType` number (a dtype argument of an
/// exported program's node), for the dtypes the formats support.
pub(crate) fn c10_of_export(code: i64) -> Option<i64> {
    DType::of_export(code).map(|d| d.c10)
}

/// PyTorch's name for `kind`, or a phrase saying it is not supported.
pub(super) fn kind_name(kind: Kind) -> &'static str {
    DType::of(kind).map_or("an unsupported dtype", |d| d.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_back_to_its_row() {
        for d in DTYPES {
            assert_eq!(DType::of(d.kind).map(|r| r.name), Some(d.name));
            assert_eq!(DType::of_storage(d.storage).map(|r| r.kind), Some(d.kind));
            assert_eq!(
                DType::of_safetensors(d.safetensors).map(|r| r.kind),
                Some(d.kind)
            );
            assert_eq!(DType::of_export(d.export).map(|r| r.kind), Some(d.kind));
        }
        // `ScalarType.COMPLEXFLOAT`, `UNKNOWN`.
        assert!(DType::of_export(10).is_none());
        assert!(DType::of_export(0).is_none());
        assert_eq!(
            DType::of_storage("UntypedStorage").map(|r| r.kind),
            Some(Kind::Uint8)
        );
        assert!(DType::of(Kind::ComplexFloat).is_none());
        assert!(DType::of_storage("QInt8Storage").is_none());
        assert_eq!(kind_name(Kind::ComplexFloat), "an unsupported dtype");
    }

    #[test]
    fn the_unsupported_dtype_message_lists_the_table() {
        let names: Vec<&str> = DTYPES.iter().map(|d| d.name).collect();
        let err = super::super::CheckpointError::UnsupportedDtype {
            path: "f".into(),
            tensor: "t".into(),
            dtype: "x".into(),
        };
        let message = err.to_string();
        let listed = message
            .split("(supported: ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(')'))
            .expect("the message lists the supported dtypes");
        let mut listed: Vec<&str> = listed.split(", ").collect();
        let mut names = names;
        listed.sort_unstable();
        names.sort_unstable();
        assert_eq!(listed, names);
    }
}
