//! The weights config of a `.pt2` archive (`data/weights/<model>_weights_config.json`): for each
//! parameter and buffer, by its dotted name in the state dict's order, the storage entry that
//! holds it (`path_name`), whether it is a parameter, whether it was pickled, and its
//! `tensor_meta` (dtype, sizes, strides, storage offset, layout). Read here into plain values,
//! every number checked; the JSON itself is carried to the output unchanged.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;

/// `torch._export.serde.schema.Layout.Strided`: the only layout a weight is stored raw in.
const STRIDED: i64 = 7;

/// The config as the file holds it: `{"config": {name: PayloadMeta, ...}}`.
#[derive(Debug, Deserialize)]
pub(super) struct PayloadConfig {
    pub(super) config: Ordered,
}

/// The entries of a JSON object in the file's order (the state dict's order, which the report and
/// the CLI keep), a name given twice refused: Python's `json.loads` keeps the last, and a file
/// must not mean one thing to it and another to this reader.
#[derive(Debug)]
pub(super) struct Ordered(pub(super) Vec<(String, PayloadMeta)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of payloads by name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some((name, meta)) = map.next_entry::<String, PayloadMeta>()? {
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "the name '{}' is given twice",
                            super::super::error::shown(&name)
                        )));
                    }
                    out.push((name, meta));
                }
                Ok(Ordered(out))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// `torch._export.serde.schema.PayloadMeta`.
#[derive(Debug, Deserialize)]
pub(super) struct PayloadMeta {
    pub(super) path_name: String,
    pub(super) is_param: bool,
    pub(super) use_pickle: bool,
    pub(super) tensor_meta: Option<TensorMeta>,
}

/// `torch._export.serde.schema.TensorMeta`; sizes, strides and offset are `SymInt`s, which a
/// saved weight always has as plain integers (`{"as_int": n}`).
#[derive(Debug, Deserialize)]
pub(super) struct TensorMeta {
    pub(super) dtype: i64,
    sizes: Vec<SymInt>,
    strides: Vec<SymInt>,
    storage_offset: SymInt,
    layout: i64,
}

#[derive(Debug, Deserialize)]
struct SymInt {
    as_int: Option<i64>,
}

/// A weight's place in its storage, in elements, as `torch.as_strided` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct View {
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
    pub(super) offset: i64,
}

impl TensorMeta {
    /// The view the metadata describes, or why it is not one this reader takes (a symbolic
    /// size, a sparse layout).
    pub(super) fn view(&self) -> Result<View, String> {
        if self.layout != STRIDED {
            return Err(format!(
                "its layout is {} (torch._export.serde.schema.Layout), not strided (7): sparse and mkldnn weights are not supported",
                self.layout
            ));
        }
        let ints = |values: &[SymInt], what: &str| {
            values
                .iter()
                .map(|v| {
                    v.as_int
                        .ok_or_else(|| format!("its {what} are symbolic, not integers"))
                })
                .collect::<Result<Vec<i64>, String>>()
        };
        Ok(View {
            size: ints(&self.sizes, "sizes")?,
            stride: ints(&self.strides, "strides")?,
            offset: self
                .storage_offset
                .as_int
                .ok_or("its storage offset is symbolic, not an integer")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_the_file_order_and_refuses_repeated_names() {
        let meta = r#"{"path_name": "weight_0", "is_param": true, "use_pickle": false,
            "tensor_meta": {"dtype": 7, "sizes": [{"as_int": 2}, {"as_int": 3}],
            "requires_grad": true, "device": {"type": "cpu", "index": null},
            "strides": [{"as_int": 3}, {"as_int": 1}], "storage_offset": {"as_int": 0},
            "layout": 7}}"#;
        let text = format!(r#"{{"config": {{"z.weight": {meta}, "a.weight": {meta}}}}}"#);
        let config: PayloadConfig = serde_json::from_str(&text).expect("parses");
        let names: Vec<&str> = config.config.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["z.weight", "a.weight"]);
        let view = config.config.0[0].1.tensor_meta.as_ref().unwrap().view();
        assert_eq!(
            view,
            Ok(View {
                size: vec![2, 3],
                stride: vec![3, 1],
                offset: 0
            })
        );

        let twice = format!(r#"{{"config": {{"a": {meta}, "a": {meta}}}}}"#);
        let err = serde_json::from_str::<PayloadConfig>(&twice).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");

        let symbolic = meta.replace(r#"[{"as_int": 2}"#, r#"[{"as_expr": {"expr_str": "s0"}}"#);
        let parsed: PayloadMeta = serde_json::from_str(&symbolic).expect("parses");
        let err = parsed.tensor_meta.unwrap().view().unwrap_err();
        assert!(err.contains("symbolic"), "{err}");
        let sparse = meta.replace(r#""layout": 7"#, r#""layout": 1"#);
        let parsed: PayloadMeta = serde_json::from_str(&sparse).expect("parses");
        assert!(parsed
            .tensor_meta
            .unwrap()
            .view()
            .unwrap_err()
            .contains("sparse"));
    }
}
