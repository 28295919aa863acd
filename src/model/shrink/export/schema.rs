//! The ATen ops the channel analysis understands, as a `torch.export` graph names them
//! (`torch.ops.aten.conv2d.default`), with their argument names in schema order and the
//! defaults an exported node leaves out (it writes only the arguments that differ from them:
//! `conv2d` without `dilation` and `groups`, `flatten` without `end_dim`).
//!
//! The analysis reads a node's inputs by position, as TorchScript lays them out; the front end
//! puts each named argument at its schema position and fills the omitted ones from here. An op
//! not in this table reaches the analysis under its full target name, which it does not know:
//! every channel it touches keeps its width.
//!
//! An argument spec is `name`, `name=default` (`None`, `True`/`False`, an int, a float, a
//! string in quotes, an int list `[1,1]`, or `_`: not read by the analysis, written as an
//! unknown value), or `name~`: a size literal the rewrite owns (a `view`'s sizes, which it sets
//! to the new widths), written as an unknown value so that the analysis does not take the old
//! widths for constants of the code.

/// `(target without "torch.ops.aten.", the analysis's kind, argument specs)`.
const OPS: &[(&str, &str, &str)] = &[
    (
        "conv1d.default",
        "aten::conv1d",
        "input weight bias=None stride=[1] padding=[0] dilation=[1] groups=1",
    ),
    (
        "conv2d.default",
        "aten::conv2d",
        "input weight bias=None stride=[1,1] padding=[0,0] dilation=[1,1] groups=1",
    ),
    (
        "conv3d.default",
        "aten::conv3d",
        "input weight bias=None stride=[1,1,1] padding=[0,0,0] dilation=[1,1,1] groups=1",
    ),
    (
        "conv1d.padding",
        "aten::conv1d",
        "input weight bias=None stride=[1] padding='valid' dilation=[1] groups=1",
    ),
    (
        "conv2d.padding",
        "aten::conv2d",
        "input weight bias=None stride=[1,1] padding='valid' dilation=[1,1] groups=1",
    ),
    (
        "conv3d.padding",
        "aten::conv3d",
        "input weight bias=None stride=[1,1,1] padding='valid' dilation=[1,1,1] groups=1",
    ),
    // Made `conv{1,2,3}d` by the front end when not transposed (front.rs, `convolution`).
    (
        "convolution.default",
        "aten::convolution",
        "input weight bias stride padding dilation transposed output_padding groups",
    ),
    ("linear.default", "aten::linear", "input weight bias=None"),
    (
        "batch_norm.default",
        "aten::batch_norm",
        "input weight bias running_mean running_var training momentum eps cudnn_enabled",
    ),
    (
        "_native_batch_norm_legit_no_training.default",
        "aten::batch_norm",
        "input weight bias running_mean running_var momentum eps",
    ),
    (
        "layer_norm.default",
        "aten::layer_norm",
        "input normalized_shape weight=None bias=None eps=1e-05 cudnn_enable=True",
    ),
    (
        "group_norm.default",
        "aten::group_norm",
        "input num_groups weight=None bias=None eps=1e-05 cudnn_enabled=True",
    ),
    // One tensor in, element by element.
    ("relu.default", "aten::relu", "self"),
    ("relu_.default", "aten::relu_", "self"),
    ("relu6.default", "aten::relu6", "self"),
    ("relu6_.default", "aten::relu6_", "self"),
    (
        "hardtanh.default",
        "aten::hardtanh",
        "self min_val=-1.0 max_val=1.0",
    ),
    (
        "hardtanh_.default",
        "aten::hardtanh_",
        "self min_val=-1.0 max_val=1.0",
    ),
    ("sigmoid.default", "aten::sigmoid", "self"),
    ("sigmoid_.default", "aten::sigmoid_", "self"),
    ("hardsigmoid.default", "aten::hardsigmoid", "self"),
    ("hardsigmoid_.default", "aten::hardsigmoid_", "self"),
    ("hardswish.default", "aten::hardswish", "self"),
    ("hardswish_.default", "aten::hardswish_", "self"),
    ("silu.default", "aten::silu", "self"),
    ("silu_.default", "aten::silu_", "self"),
    ("gelu.default", "aten::gelu", "self approximate='none'"),
    ("gelu_.default", "aten::gelu_", "self approximate='none'"),
    ("tanh.default", "aten::tanh", "self"),
    ("tanh_.default", "aten::tanh_", "self"),
    (
        "elu.default",
        "aten::elu",
        "self alpha=1 scale=1 input_scale=1",
    ),
    (
        "elu_.default",
        "aten::elu_",
        "self alpha=1 scale=1 input_scale=1",
    ),
    ("selu.default", "aten::selu", "self"),
    ("selu_.default", "aten::selu_", "self"),
    (
        "leaky_relu.default",
        "aten::leaky_relu",
        "self negative_slope=0.01",
    ),
    (
        "leaky_relu_.default",
        "aten::leaky_relu_",
        "self negative_slope=0.01",
    ),
    ("mish.default", "aten::mish", "self"),
    ("mish_.default", "aten::mish_", "self"),
    (
        "softplus.default",
        "aten::softplus",
        "self beta=1 threshold=20",
    ),
    ("dropout.default", "aten::dropout", "input p train"),
    ("dropout_.default", "aten::dropout_", "self p train"),
    (
        "contiguous.default",
        "aten::contiguous",
        "self memory_format=_",
    ),
    ("clone.default", "aten::clone", "self memory_format=None"),
    ("detach.default", "aten::detach", "self"),
    ("neg.default", "aten::neg", "self"),
    ("clamp.default", "aten::clamp", "self min=None max=None"),
    ("clamp_.default", "aten::clamp_", "self min=None max=None"),
    ("clamp_min.default", "aten::clamp_min", "self min"),
    ("clamp_max.default", "aten::clamp_max", "self max"),
    ("exp.default", "aten::exp", "self"),
    ("log.default", "aten::log", "self"),
    ("sqrt.default", "aten::sqrt", "self"),
    ("abs.default", "aten::abs", "self"),
    ("square.default", "aten::square", "self"),
    ("pow.Tensor_Scalar", "aten::pow", "self exponent"),
    ("erf.default", "aten::erf", "self"),
    // Two operands, broadcast.
    ("add.Tensor", "aten::add", "self other alpha=1"),
    ("add_.Tensor", "aten::add_", "self other alpha=1"),
    ("add.Scalar", "aten::add", "self other alpha=1"),
    ("sub.Tensor", "aten::sub", "self other alpha=1"),
    ("sub_.Tensor", "aten::sub_", "self other alpha=1"),
    ("sub.Scalar", "aten::sub", "self other alpha=1"),
    ("rsub.Tensor", "aten::rsub", "self other alpha=1"),
    ("rsub.Scalar", "aten::rsub", "self other alpha=1"),
    ("mul.Tensor", "aten::mul", "self other"),
    ("mul_.Tensor", "aten::mul_", "self other"),
    ("mul.Scalar", "aten::mul", "self other"),
    ("div.Tensor", "aten::div", "self other"),
    ("div_.Tensor", "aten::div_", "self other"),
    ("div.Scalar", "aten::div", "self other"),
    ("maximum.default", "aten::maximum", "self other"),
    ("minimum.default", "aten::minimum", "self other"),
    // Reshapes.
    (
        "flatten.using_ints",
        "aten::flatten",
        "self start_dim=0 end_dim=-1",
    ),
    ("view.default", "aten::view", "self size~"),
    ("reshape.default", "aten::reshape", "self shape~"),
    ("_unsafe_view.default", "aten::view", "self size~"),
    ("squeeze.default", "aten::squeeze", "self"),
    ("squeeze.dim", "aten::squeeze", "self dim"),
    ("squeeze.dims", "aten::squeeze", "self dim=_"),
    ("unsqueeze.default", "aten::unsqueeze", "self dim"),
    ("cat.default", "aten::cat", "tensors dim=0"),
    ("concat.default", "aten::cat", "tensors dim=0"),
    ("chunk.default", "aten::chunk", "self chunks dim=0"),
    (
        "unsafe_chunk.default",
        "aten::unsafe_chunk",
        "self chunks dim=0",
    ),
    ("split.Tensor", "aten::split", "self split_size dim=0"),
    (
        "unsafe_split.Tensor",
        "aten::unsafe_split",
        "self split_size dim=0",
    ),
    (
        "split_with_sizes.default",
        "aten::split_with_sizes",
        "self split_sizes dim=0",
    ),
    (
        "unsafe_split_with_sizes.default",
        "aten::unsafe_split_with_sizes",
        "self split_sizes dim=0",
    ),
    ("permute.default", "aten::permute", "self dims"),
    ("transpose.int", "aten::transpose", "self dim0 dim1"),
    ("t.default", "aten::t", "self"),
    ("swapaxes.default", "aten::swapaxes", "self axis0 axis1"),
    ("swapdims.default", "aten::swapdims", "self dim0 dim1"),
    (
        "mean.dim",
        "aten::mean",
        "self dim keepdim=False dtype=None",
    ),
    ("mean.default", "aten::mean", "self dtype=None"),
    (
        "sum.dim_IntList",
        "aten::sum",
        "self dim keepdim=False dtype=None",
    ),
    ("sum.default", "aten::sum", "self dtype=None"),
    ("amax.default", "aten::amax", "self dim=[] keepdim=False"),
    ("amin.default", "aten::amin", "self dim=[] keepdim=False"),
    (
        "constant_pad_nd.default",
        "aten::constant_pad_nd",
        "self pad value=0",
    ),
    (
        "pad.default",
        "aten::pad",
        "self pad mode='constant' value=None",
    ),
    (
        "slice.Tensor",
        "aten::slice",
        "self dim=0 start=None end=None step=1",
    ),
    // Pooling: the analysis reads the input and output shapes only.
    (
        "max_pool1d.default",
        "aten::max_pool1d",
        "self kernel_size stride=_ padding=_ dilation=_ ceil_mode=_",
    ),
    (
        "max_pool2d.default",
        "aten::max_pool2d",
        "self kernel_size stride=_ padding=_ dilation=_ ceil_mode=_",
    ),
    (
        "max_pool3d.default",
        "aten::max_pool3d",
        "self kernel_size stride=_ padding=_ dilation=_ ceil_mode=_",
    ),
    (
        "max_pool2d_with_indices.default",
        "aten::max_pool2d_with_indices",
        "self kernel_size stride=_ padding=_ dilation=_ ceil_mode=_",
    ),
    (
        "avg_pool1d.default",
        "aten::avg_pool1d",
        "self kernel_size stride=_ padding=_ ceil_mode=_ count_include_pad=_",
    ),
    (
        "avg_pool2d.default",
        "aten::avg_pool2d",
        "self kernel_size stride=_ padding=_ ceil_mode=_ count_include_pad=_ divisor_override=_",
    ),
    (
        "avg_pool3d.default",
        "aten::avg_pool3d",
        "self kernel_size stride=_ padding=_ ceil_mode=_ count_include_pad=_ divisor_override=_",
    ),
    (
        "adaptive_avg_pool1d.default",
        "aten::adaptive_avg_pool1d",
        "self output_size",
    ),
    (
        "adaptive_avg_pool2d.default",
        "aten::adaptive_avg_pool2d",
        "self output_size",
    ),
    (
        "adaptive_avg_pool3d.default",
        "aten::adaptive_avg_pool3d",
        "self output_size",
    ),
    (
        "adaptive_max_pool1d.default",
        "aten::adaptive_max_pool1d",
        "self output_size",
    ),
    (
        "adaptive_max_pool2d.default",
        "aten::adaptive_max_pool2d",
        "self output_size",
    ),
    // Products with a weight laid out [in, out].
    (
        "addmm.default",
        "aten::addmm",
        "self mat1 mat2 beta=1 alpha=1",
    ),
    ("mm.default", "aten::mm", "self mat2"),
    ("matmul.default", "aten::matmul", "self other"),
];

/// A default an exported node may leave out.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Default {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Ints(Vec<i64>),
    /// Not read by the analysis: an unknown value.
    Unread,
}

/// One argument of a schema.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Arg {
    pub name: &'static str,
    /// `None`: required.
    pub default: Option<Default>,
    /// A size literal the rewrite owns (written as an unknown value).
    pub owned: bool,
}

/// An op of the table: the analysis's kind and the arguments in schema order.
#[derive(Clone, Debug)]
pub(super) struct Schema {
    pub kind: &'static str,
    pub args: Vec<Arg>,
}

fn parse_default(text: &str) -> Default {
    match text {
        "None" => Default::None,
        "True" => Default::Bool(true),
        "False" => Default::Bool(false),
        "_" => Default::Unread,
        t if t.starts_with('\'') => Default::Str(t.trim_matches('\'').to_string()),
        t if t.starts_with('[') => Default::Ints(
            t.trim_matches(['[', ']'])
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect(),
        ),
        t => match t.parse::<i64>() {
            Ok(i) => Default::Int(i),
            Err(_) => t.parse().map(Default::Float).unwrap_or(Default::Unread),
        },
    }
}

/// The schema of `target` (`torch.ops.aten.conv2d.default`), if the analysis understands it.
pub(super) fn schema(target: &str) -> Option<Schema> {
    let op = target.strip_prefix("torch.ops.aten.")?;
    let &(_, kind, spec) = OPS.iter().find(|(name, _, _)| *name == op)?;
    let args = spec
        .split(' ')
        .map(|a| {
            if let Some(name) = a.strip_suffix('~') {
                Arg {
                    name,
                    default: None,
                    owned: true,
                }
            } else if let Some((name, d)) = a.split_once('=') {
                Arg {
                    name,
                    default: Some(parse_default(d)),
                    owned: false,
                }
            } else {
                Arg {
                    name: a,
                    default: None,
                    owned: false,
                }
            }
        })
        .collect();
    Some(Schema { kind, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_reads_back() {
        for (name, kind, spec) in OPS {
            let s = schema(&format!("torch.ops.aten.{name}")).expect("in the table");
            assert_eq!(s.kind, *kind);
            assert_eq!(s.args.len(), spec.split(' ').count(), "{name}");
            assert!(kind.starts_with("aten::"), "{name}");
        }
        let conv = schema("torch.ops.aten.conv2d.default").unwrap();
        assert_eq!(conv.args[6].name, "groups");
        assert_eq!(conv.args[6].default, Some(Default::Int(1)));
        assert_eq!(conv.args[3].default, Some(Default::Ints(vec![1, 1])));
        let view = schema("torch.ops.aten.view.default").unwrap();
        assert!(view.args[1].owned);
        assert_eq!(
            schema("torch.ops.aten.layer_norm.default").unwrap().args[4].default,
            Some(Default::Float(1e-5))
        );
        assert!(schema("torch.ops.aten.expand.default").is_none());
        assert!(schema("aten::conv2d").is_none());
    }
}
