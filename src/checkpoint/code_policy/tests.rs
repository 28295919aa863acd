//! The check on pieces of source: what real models hold passes, every construct that reaches
//! files, stdout, other processes or custom classes is refused, wherever it hides.

use super::rules::{check, declared_names, operators};
use super::tokens::{tokenize, Finding};
use super::*;

/// [`check`](super::rules::check) on one piece of source alone (its own declarations only).
fn scan(source: &[u8]) -> Result<(), Finding> {
    let tokens = tokenize(source)?;
    let declared = declared_names(std::iter::once(tokens.as_slice()));
    check(&tokens, &declared)
}

fn refused(source: &str) -> Option<(usize, String)> {
    scan(source.as_bytes()).err().map(|f| (f.line, f.what))
}

#[test]
fn plain_module_code_passes() {
    let code = "class Linear(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  weight : Tensor\n  bias : Tensor\n  def forward(self: __torch__.Linear, input: Tensor) -> Tensor:\n    _0 = \"can't load # or save\"\n    x = ops.prim.NumToTensor(1e5)\n    return torch.linear(input, self.weight, self.bias)  # save\n";
    assert_eq!(refused(code), None);
    let quantized = "  _packed_params : __torch__.torch.classes.quantized.LinearPackedParamsBase\n    Y = ops.quantized.linear_dynamic(x, p, True)\n";
    assert_eq!(refused(quantized), None);
    // torchvision's module paths hold an `ops` package: a class name, not operators.
    let torchvision =
        "  __annotations__[\"0\"] = __torch__.torchvision.ops.misc.Conv2dNormActivation\n";
    assert_eq!(refused(torchvision), None);
}

/// What serialized real models hold (torchvision scripted and traced, Hugging Face traced):
/// the allow-list takes all of it.
#[test]
fn the_constructs_of_real_models_pass() {
    let code = r#"class Block(Module):
  __parameters__ = []
  training : bool
  __annotations__["0"] = __torch__.torch.nn.modules.conv.Conv2d
  conv1 : __torch__.torch.nn.modules.conv.Conv2d
  def forward(self: __torch__.Block, x: Tensor, y: Optional[Tensor]=None) -> Tensor:
conv1 = self.conv1
out = (conv1).forward(x, )
_0 = getattr(self, "0")
_1 = (_0).forward(out, )
if hasattr(self, "training"):
  pass
_2 = torch.add_(out, x, alpha=1)
_3 = ops.aten.size(_2, -1)
_4 = torch.autograd.grad([_2], [x])
n = annotate(List[int], [])
_5 = unchecked_cast(Tensor, y)
_6 = uninitialized(Tensor)
b = isinstance(y, Tensor)
for i in range(len(n)):
  _7 = n.append(int(i))
d = {"a": 1}
_8 = d.items()
s = "{}x{}".format(1, 2)
_9 = s.startswith("1")
_10 = torch.warn("deprecated", 2)
f = 1.0000000000000001e-05 + 1. + .5 + 0x1f + 2j
_11 = _2.shape
_12 = _2.dtype
_13 = _2.device.type
_14 = _2.half().float().to(torch.device("cpu"))
_15 = torch.zeros_like(_2).contiguous().T
_16 = CONSTANTS.c0
_17 = __torch__.torch.nn.functional.relu(_2, True)
_18 = ops.prim.dtype(_2)
_19 = fork(self.conv1, x)
_20 = torch.wait(_19)
_21 = ops.profiler._record_function_enter_new("x", None)
ops.prim.RaiseException("AssertionError: ", "builtins.AssertionError")
return torch.relu(_1)
"#;
    assert_eq!(refused(code), None);
}

#[test]
fn code_that_runs_on_load_or_reaches_out_is_refused() {
    let cases = [
        (
            "class E(Module):\n  def __setstate__(self, s: int) -> None:\n    pass\n",
            2,
        ),
        ("x = 1\n  t = torch.from_file(\"/tmp/v\", True, 4)\n", 2),
        ("t = ops.aten.from_file(p)\n", 1),
        ("ops.aten.save(t, \"f\")\n", 1),
        ("y = ops.myext.run(x)\n", 1),
        ("c : __torch__.torch.classes.myext.Thing\n", 1),
        ("c : __torch__.torch.classes.dist_c10d.FileStore\n", 1),
        ("s = \"\"\"a\nb\"\"\"\nx = torch.from_file(p)\n", 3),
        ("s = 'never ends\n", 1),
        ("s = \"escaped \\\" quote\" ; x.save(p)\n", 1),
    ];
    for (code, line) in cases {
        let found = refused(code).unwrap_or_else(|| panic!("not refused: {code:?}"));
        assert_eq!(found.0, line, "{code:?}: {}", found.1);
    }
}

/// Issue 20's attacks: names in string literals, behind parentheses or aliases, as methods.
#[test]
fn names_hidden_from_a_deny_list_are_refused() {
    let cases = [
        // The four that passed the deny-list.
        (
            "x = 1\ny = getattr(torch, \"from_file\")(p, True, 4)\n",
            2,
            "namespace 'torch'",
        ),
        ("getattr(torch, \"save\")(x, p)\n", 1, "namespace 'torch'"),
        (
            "f = getattr(ops.aten, \"from_file\")\n",
            1,
            "namespace 'ops.aten'",
        ),
        (
            "y = (ops)._c10d_functional.wait_tensor(x)\n",
            1,
            "namespace 'ops'",
        ),
        // Their relatives.
        (
            "classes : int\ny = (__torch__.torch).classes.dist_c10d.FileStore(p, 1)\n",
            2,
            "'.classes'",
        ),
        (
            "classes : int\ny = getattr(__torch__.torch, \"classes\")\n",
            2,
            "'.classes'",
        ),
        ("y = (torch).from_file(p)\n", 1, "namespace 'torch'"),
        (
            "a = ops.aten\nb = a.from_file(p)\n",
            1,
            "namespace 'ops.aten'",
        ),
        ("t = torch\n", 1, "namespace 'torch'"),
        ("y = getattr(x, \"save\")(p)\n", 1, "aten::save"),
        ("y = getattr(x, \"sa\\x76e\")(p)\n", 1, "string literal"),
        ("y = getattr(x, \"sa\" \"ve\")(p)\n", 1, "string literal"),
        ("y = getattr(x, name)(p)\n", 1, "string literal"),
        ("g = getattr\ny = g(x, \"save\")(p)\n", 1, "getattr"),
        ("x.save(p)\n", 1, "aten::save"),
        ("torch.relu(x).save(p)\n", 1, "aten::save"),
        ("y = 0..save(p)\n", 1, "aten::save"),
        ("y = x\\\n.save(p)\n", 2, "aten::save"),
        ("y = ops.c10d.allreduce_(x)\n", 1, "'c10d'"),
        (
            "y = ops._c10d_functional.wait_tensor(x)\n",
            1,
            "'_c10d_functional'",
        ),
        ("y = torch.no_such_op(x)\n", 1, "not an operator"),
        ("y = x.no_such_method()\n", 1, "neither"),
        ("y = torch.relu.save\n", 1, "attribute of an operator"),
        ("print(\"PAYLOAD\")\n", 1, "stdout"),
        ("ops.prim.Print(\"PAYLOAD\")\n", 1, "outside"),
        ("torch._print(\"PAYLOAD\")\n", 1, "outside"),
        ("y = ops.prim.rpc_async(x)\n", 1, "outside"),
        ("y = x.__setstate__(s)\n", 1, "__setstate__"),
    ];
    for (code, line, words) in cases {
        let found = refused(code).unwrap_or_else(|| panic!("not refused: {code:?}"));
        assert_eq!(found.0, line, "{code:?}: {}", found.1);
        assert!(found.1.contains(words), "{code:?}: {}", found.1);
    }
}

/// What libtorch's lexer reads as code is read as code: a `# type:` comment's text (a string
/// opened there must not hide what follows), lines joined by a backslash, blanks that C's
/// `isspace` takes (the vertical tab).
#[test]
fn what_libtorch_reads_as_code_is_read_as_code() {
    let type_comment = "  def _pad(self, x):\n    # type: ('''torch.classes.quantized.LinearPackedParamsBase\n    ''') -> int\n    return 1\n  def forward(self, x):\n    t = torch.from_file(\"p\", True, 8)\n    return x\n  def _close(self) -> str:\n    return \"'''\"  # \"\n";
    let found = refused(type_comment).expect("refused");
    assert_eq!(found.0, 6, "{}", found.1);
    assert!(found.1.contains("'torch.from_file'"), "{}", found.1);
    let continued = "  def profiling(self) -> int:\n    return 0\n  def forward(self, x):\n    p = __torch__.torch.\\\n    classes.profiling._ScriptProfile()\n    return x\n";
    let found = refused(continued).expect("refused");
    assert!(found.1.contains("'profiling'"), "{}", found.1);
    let found = refused("y = torch\x0b.from_file(p)\n").expect("refused");
    assert!(found.1.contains("'torch.from_file'"), "{}", found.1);
    // A comment that only starts like one stays a comment.
    assert_eq!(refused("x = 1  # typed: torch.save(x)\n"), None);
}

/// A denied operator's name stays refused as an attribute even when the archive declares
/// it (a method `save` of its own would not make `x.save(p)` safe on a tensor).
#[test]
fn declaring_a_denied_name_does_not_allow_it() {
    let code = "class M(Module):\n  save : Tensor\n  def from_file(self) -> None:\n    pass\n  def forward(self, x: Tensor) -> None:\n    x.save(\"p\")\n";
    let found = refused(code).expect("refused");
    assert_eq!(found.0, 6, "{}", found.1);
    // A declared name that is no operator is an attribute of the archive's own classes.
    let own = "class M(Module):\n  helper : __torch__.H\n  def forward(self) -> Tensor:\n    return (self.helper).run_me()\n  def run_me(self) -> Tensor:\n    pass\n";
    assert_eq!(refused(own), None);
}

#[test]
fn names_in_strings_and_comments_are_not_code() {
    assert_eq!(
        refused("a = 'from_file' # __setstate__ torch.save\nb = \"ops.evil.x\"\n"),
        None
    );
    assert_eq!(refused("a = '''x.save(\n)''' + \"\\\\\"\n"), None);
}

/// The data file is what scripts/code_policy_ops.py writes: no denied operator in it, and
/// the operators real models call are.
#[test]
fn the_allowed_operators_exclude_the_denied_ones() {
    let ops = &operators().qualified;
    for denied in DENIED_OPERATORS {
        assert!(!ops.contains(denied), "{denied} is allowed");
    }
    for needed in [
        "aten::conv2d",
        "aten::linear",
        "prim::NumToTensor",
        "aten::warn",
        "quantized::linear_dynamic",
    ] {
        assert!(ops.contains(needed), "{needed} is not allowed");
    }
    assert!(ops.len() > 1500, "{} operators", ops.len());
}
