//! Sparsity reports: per tensor and in total.

use crate::error::Result;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use tch::{Kind, Tensor};

/// The sparsity of one tensor.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TensorReport {
    /// The tensor's dotted name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its dtype, as PyTorch names it (`float32`, ...).
    pub dtype: String,
    /// Its number of elements.
    pub numel: i64,
    /// How many of them are zero.
    pub zeros: i64,
    /// `zeros / numel`, 0 for an empty tensor.
    pub sparsity: f64,
    /// For a name of tied weights other than the one the tensor is pruned under: that name.
    /// The tensor is counted once in the totals, under that name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tied_to: Option<String>,
}

/// The sparsity of a set of tensors, in their order, with totals.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Each tensor, in order.
    pub tensors: Vec<TensorReport>,
    /// The elements of all tensors.
    pub numel: i64,
    /// The zeros among them.
    pub zeros: i64,
    /// `zeros / numel`, 0 when there is no element.
    pub sparsity: f64,
    /// The prunable weights only (PyTorch's default selection: floating-point tensors whose
    /// name ends in `weight`, with two or more dimensions), a tied tensor counted once.
    pub prunable: GroupReport,
    /// Per layer: the tensors under each `<prefix>.<index>` (`model.layers.3`,
    /// `transformer.h.0`), by the first numbered module of their names, in the file's order.
    /// Empty when the names number fewer than two layers, or when none holds two tensors.
    pub layers: Vec<GroupReport>,
    /// Per module type: the tensors of modules with the same last name (`q_proj`,
    /// `input_layernorm`, `conv1`) and parameter (`weight`, `bias`): `q_proj.weight`.
    /// Empty when fewer than two types are found, or when none holds two tensors.
    pub module_types: Vec<GroupReport>,
}

/// Totals over a group of tensors of a [`Report`] (tied tensors counted once), under the same
/// keys as a tensor's row.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct GroupReport {
    /// The layer (`model.layers.3`), the module type (`q_proj.weight`), or `prunable`.
    pub name: String,
    /// Tensors in the group.
    pub tensors: usize,
    /// Their elements.
    pub numel: i64,
    /// Exact zeros among them.
    pub zeros: i64,
    /// `zeros / numel` (0 for no elements).
    pub sparsity: f64,
}

impl GroupReport {
    fn add(&mut self, r: &TensorReport) {
        if r.tied_to.is_none() {
            self.tensors += 1;
            self.numel += r.numel;
            self.zeros += r.zeros;
            self.sparsity = ratio(self.zeros, self.numel);
        }
    }
}

/// The layer of a tensor's name: up to its first all-digit segment (`model.layers.3`).
fn layer_of(name: &str) -> Option<&str> {
    let mut end = 0;
    for part in name.split('.') {
        end += part.len();
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            return Some(&name[..end]);
        }
        end += 1;
    }
    None
}

/// The module type of a tensor's name: its last module and parameter (`q_proj.weight`), for
/// names with a module.
fn module_type_of(name: &str) -> Option<String> {
    let mut parts = name.rsplit('.');
    let parameter = parts.next()?;
    let module = parts.find(|p| !p.bytes().all(|b| b.is_ascii_digit()))?;
    Some(format!("{module}.{parameter}"))
}

/// Groups `rows` by `key`, in the order keys first appear; none for fewer than two groups or
/// when no group holds two tensors.
fn grouped(rows: &[TensorReport], key: impl Fn(&str) -> Option<String>) -> Vec<GroupReport> {
    let mut groups: Vec<GroupReport> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for r in rows {
        let Some(k) = key(&r.name) else { continue };
        let i = *at.entry(k.clone()).or_insert_with(|| {
            groups.push(GroupReport {
                name: k,
                ..Default::default()
            });
            groups.len() - 1
        });
        groups[i].add(r);
    }
    // One group, or about one per tensor (a model without repeated blocks), says nothing the
    // rows do not.
    if groups.len() < 2 || groups.iter().all(|g| g.tensors < 2) {
        groups.clear();
    }
    groups
}

impl TensorReport {
    /// The row of a tensor of `shape` and `kind` holding `zeros` exact zeros.
    pub(crate) fn new(name: &str, shape: Vec<i64>, kind: Kind, zeros: i64) -> Self {
        let numel = shape.iter().product();
        TensorReport {
            name: name.to_string(),
            shape,
            dtype: format!("{kind:?}").to_lowercase(),
            numel,
            zeros,
            sparsity: ratio(zeros, numel),
            tied_to: None,
        }
    }
}

fn ratio(zeros: i64, numel: i64) -> f64 {
    if numel == 0 {
        0.0
    } else {
        zeros as f64 / numel as f64
    }
}

impl Report {
    /// Counts the exact zeros (-0.0 included) of each tensor.
    pub fn new(tensors: &[(String, Tensor)]) -> Result<Self> {
        Self::with_ties(tensors, &HashMap::new())
    }

    /// [`Report::new`] for a model with tied weights: `ties` maps each alias to the name its
    /// tensor is counted under; an alias's row says it is tied and is not counted again.
    pub fn with_ties(tensors: &[(String, Tensor)], ties: &HashMap<String, String>) -> Result<Self> {
        let mut rows = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let numel = t.numel() as i64;
            let zeros = numel - t.f_count_nonzero(None)?.f_int64_value(&[])?;
            let mut row = TensorReport::new(name, t.size(), t.kind(), zeros);
            row.tied_to = ties.get(name).cloned();
            rows.push(row);
        }
        Ok(Self::from_rows(rows))
    }

    /// The totals of `rows` (a tied row not counted again).
    pub(crate) fn from_rows(rows: Vec<TensorReport>) -> Self {
        let counted = || rows.iter().filter(|r| r.tied_to.is_none());
        let numel = counted().map(|r| r.numel).sum();
        let zeros = counted().map(|r| r.zeros).sum();
        let mut prunable = GroupReport {
            name: "prunable".into(),
            ..Default::default()
        };
        for r in &rows {
            let float = matches!(r.dtype.as_str(), "float" | "double" | "half" | "bfloat16");
            if float && r.name.ends_with("weight") && r.shape.len() >= 2 {
                prunable.add(r);
            }
        }
        let layers = grouped(&rows, |n| layer_of(n).map(str::to_string));
        let module_types = grouped(&rows, module_type_of);
        Self {
            tensors: rows,
            numel,
            zeros,
            sparsity: ratio(zeros, numel),
            prunable,
            layers,
            module_types,
        }
    }

    /// The sparsity of the tensors whose names are in `names`.
    pub fn sparsity_of(&self, names: &[String]) -> f64 {
        // A set: a list searched per tensor made a report of n tensors cost n² comparisons.
        let names: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let (z, n) = self
            .tensors
            .iter()
            .filter(|r| r.tied_to.is_none() && names.contains(r.name.as_str()))
            .fold((0, 0), |(z, n), r| (z + r.zeros, n + r.numel));
        ratio(z, n)
    }
}

/// The widest the table's name column gets.
const NAME_WIDTH: usize = 120;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names from files can be any length: past NAME_WIDTH a name runs over its column (a
        // formatting width over 65,535 panics). They can hold newlines and terminal escapes
        // too, shown escaped: a row is one line, and a file writes nothing to the terminal.
        let shown = |name: &str| crate::checkpoint::escaped_and_cut(name, usize::MAX);
        let width = self
            .tensors
            .iter()
            .map(|r| shown(&r.name).len())
            .max()
            .unwrap_or(4)
            .clamp(5, NAME_WIDTH);
        writeln!(
            f,
            "{:<width$}  {:<18} {:<8} {:>12} {:>12} {:>9}",
            "name", "shape", "dtype", "numel", "zeros", "sparsity"
        )?;
        for r in &self.tensors {
            let shape = format!("{:?}", r.shape);
            write!(
                f,
                "{:<width$}  {:<18} {:<8} {:>12} {:>12} {:>8.2}%",
                shown(&r.name),
                shape,
                r.dtype,
                r.numel,
                r.zeros,
                100.0 * r.sparsity
            )?;
            match &r.tied_to {
                Some(to) => writeln!(f, "  tied to {} (counted once)", shown(to))?,
                None => writeln!(f)?,
            }
        }
        // The groups: `layers`, `module_types` and `prunable`, as the JSON names them.
        for (title, groups) in [
            ("layers", &self.layers),
            ("module_types", &self.module_types),
        ] {
            if groups.is_empty() {
                continue;
            }
            writeln!(
                f,
                "{:<width$}  {:<18} {:<8} {:>12} {:>12} {:>9}",
                title, "tensors", "", "numel", "zeros", "sparsity"
            )?;
            for g in groups.iter() {
                writeln!(
                    f,
                    "{:<width$}  {:<18} {:<8} {:>12} {:>12} {:>8.2}%",
                    shown(&g.name),
                    g.tensors,
                    "",
                    g.numel,
                    g.zeros,
                    100.0 * g.sparsity
                )?;
            }
        }
        let p = &self.prunable;
        if p.tensors > 0 && p.numel != self.numel {
            writeln!(
                f,
                "{:<width$}  {:<18} {:<8} {:>12} {:>12} {:>8.2}%",
                "prunable",
                p.tensors,
                "",
                p.numel,
                p.zeros,
                100.0 * p.sparsity
            )?;
        }
        write!(
            f,
            "{:<width$}  {:<18} {:<8} {:>12} {:>12} {:>8.2}%",
            "total",
            "",
            "",
            self.numel,
            self.zeros,
            100.0 * self.sparsity
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn counts_exact_zeros_including_negative_zero() {
        let t = Tensor::from_slice(&[0f32, -0.0, 1.0, 2.0]);
        let e = Tensor::zeros([0], (Kind::Float, tch::Device::Cpu));
        let r = Report::new(&[("a".into(), t), ("empty".into(), e)]).unwrap();
        assert_eq!((r.tensors[0].zeros, r.tensors[0].sparsity), (2, 0.5));
        assert_eq!((r.tensors[1].numel, r.tensors[1].sparsity), (0, 0.0));
        assert_eq!((r.numel, r.zeros, r.sparsity), (4, 2, 0.5));
        assert!(r.to_string().lines().last().unwrap().starts_with("total"));
    }

    /// Names of any length print (the column stops widening), one row per tensor.
    /// Grouped by layer and by module type, with a total over the prunable weights only; the
    /// table's headers are the JSON's keys.
    #[test]
    fn groups_by_layer_and_module_type() {
        let w = || Tensor::from_slice(&[0f32, 1.0, 2.0, 3.0]).reshape([2, 2]);
        let n = || Tensor::from_slice(&[0f32, 1.0]);
        let r = Report::new(&[
            ("model.layers.0.self_attn.q_proj.weight".into(), w()),
            ("model.layers.0.input_layernorm.weight".into(), n()),
            ("model.layers.1.self_attn.q_proj.weight".into(), w()),
            ("model.layers.1.input_layernorm.weight".into(), n()),
            ("model.norm.weight".into(), n()),
        ])
        .unwrap();
        let names = |g: &[GroupReport]| g.iter().map(|g| g.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&r.layers), ["model.layers.0", "model.layers.1"]);
        assert_eq!(
            names(&r.module_types),
            ["q_proj.weight", "input_layernorm.weight", "norm.weight"]
        );
        assert_eq!((r.layers[0].numel, r.layers[0].zeros), (6, 2));
        assert_eq!(
            (r.prunable.tensors, r.prunable.numel, r.prunable.zeros),
            (2, 8, 2)
        );
        let text = r.to_string();
        let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["name", "shape", "dtype", "numel", "zeros", "sparsity"]
        );
        let json = serde_json::to_value(&r).unwrap();
        for key in &header[3..] {
            assert!(json["tensors"][0].get(key).is_some() && json["prunable"].get(key).is_some());
        }
        assert!(text.contains("\nprunable ") && text.contains("\nmodel.layers.1 "));
        assert!(text.lines().last().unwrap().starts_with("total"));
    }

    #[test]
    fn a_name_longer_than_any_width_prints() {
        let t = Tensor::from_slice(&[0f32, 1.0]);
        let long = "n".repeat(70_000);
        let r = Report::new(&[(long.clone(), t.shallow_clone()), ("b".into(), t)]).unwrap();
        let text = r.to_string();
        assert_eq!(text.lines().count(), 4);
        assert!(text.lines().nth(1).unwrap().starts_with(&long));
        assert!(text
            .lines()
            .nth(2)
            .unwrap()
            .starts_with(&format!("b{}", " ".repeat(NAME_WIDTH - 1))));
    }

    #[test]
    fn tied_tensors_are_counted_once_and_say_so() {
        let t = Tensor::from_slice(&[0f32, 1.0, 2.0, 3.0]);
        let b = Tensor::from_slice(&[0f32, 0.0]);
        let tensors = [
            ("wte.weight".to_string(), t.shallow_clone()),
            ("bias".to_string(), b),
            ("lm_head.weight".to_string(), t),
        ];
        let ties = HashMap::from([("lm_head.weight".to_string(), "wte.weight".to_string())]);
        let r = Report::with_ties(&tensors, &ties).unwrap();
        assert_eq!((r.numel, r.zeros), (6, 3));
        assert_eq!(r.tensors[2].tied_to.as_deref(), Some("wte.weight"));
        assert_eq!(
            r.sparsity_of(&["wte.weight".into(), "lm_head.weight".into()]),
            0.25
        );
        let text = r.to_string();
        assert!(text
            .lines()
            .nth(3)
            .unwrap()
            .ends_with("tied to wte.weight (counted once)"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["tensors"][2]["tied_to"], "wte.weight");
        assert!(json["tensors"][0].get("tied_to").is_none());
    }
}
