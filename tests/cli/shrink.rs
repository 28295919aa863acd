//! `tch-prune shrink` end to end on a small scripted CNN (a residual block, a depthwise conv,
//! squeeze-and-excitation, flatten into a linear layer, and a layer_norm-ed branch the analysis
//! must leave alone): --verify, --json, --global with --round-to, --params, the exact route,
//! and errors on one line. Needs Python's torch to make the model (fails without it).

use crate::common;
use common::Cli;

use std::path::{Path, PathBuf};

const MODEL: &str = r#"
import sys, torch, torch.nn as nn
torch.manual_seed(0)
class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Conv2d(c, 4, 1)
        self.fc2 = nn.Conv2d(4, c, 1)
    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        return x * s
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se = SE(16)
        self.norm = nn.LayerNorm([16, 8, 8])
        self.fc = nn.Linear(16 * 4 * 4, 24)
        self.out = nn.Linear(24, 5)
    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.b(torch.relu(self.a(x)))
        x = self.se(torch.relu(self.dw(x)))
        y = self.norm(x)
        y = nn.functional.max_pool2d(y, 2)
        return self.out(torch.relu(self.fc(torch.flatten(y, 1))))
m = Net().eval()
for p in m.parameters():
    p.data.normal_(0, 0.3)
torch.jit.save(torch.jit.script(m), sys.argv[1])
"#;

fn model(dir: &Path) -> PathBuf {
    let path = dir.join("net.pt");
    common::run_python(MODEL, &[&path])
        .expect("this test needs TCH_PRUNE_PYTHON with torch (make test provides it)");
    path
}

/// `tch-prune shrink ARGS`, run to the end.
pub(crate) fn shrink(args: &[&str]) -> std::process::Output {
    Cli::new("shrink").args(args).run()
}

/// `tch-prune shrink IN -o OUT ARGS --input-shape 1,3,8,8 --json --runs 1`, which must succeed.
fn shrink_json(input: &str, output: &str, args: &[&str]) -> serde_json::Value {
    let common = ["--input-shape", "1,3,8,8", "--json", "--runs", "1"];
    let all: Vec<&str> = [input, "-o", output]
        .iter()
        .chain(args)
        .chain(&common)
        .copied()
        .collect();
    json(&shrink(&all))
}

/// The JSON a successful run printed.
pub(crate) fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Each group's producer, width before and width after, from `--json`.
pub(crate) fn afters(v: &serde_json::Value) -> Vec<(String, i64, i64)> {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["producer"].as_str().unwrap().to_string(),
                g["before"].as_i64().unwrap(),
                g["after"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn shrink_cli() {
    let dir = common::tempdir();
    let input = model(dir.path());
    let out = dir.path().join("small.pt");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());

    // Per group, half; the result is checked against the group-zeroed original.
    let v = shrink_json(i, o, &["--amount", "0.5", "--verify"]);
    let groups = afters(&v);
    // stem/bn/residual/depthwise/SE scale are one group (16); `a` its own (32); the SE's
    // squeeze (4); `fc` (24); `out` reaches the output. The layer_norm blocks the 16 group.
    for (producer, before, after) in [
        ("a (conv2d output channels)", 32, 16),
        ("se.fc1 (conv2d output channels)", 4, 2),
        ("fc (linear output features)", 24, 12),
        ("stem (conv2d output channels)", 16, 16),
        ("out (linear output features)", 5, 5),
    ] {
        assert!(
            groups.contains(&(producer.into(), before, after)),
            "{producer}: {groups:?}"
        );
    }
    let blocked = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["producer"] == "stem (conv2d output channels)")
        .unwrap();
    assert!(
        blocked["blocked"].to_string().contains("layer_norm"),
        "{blocked}"
    );
    assert!(v["verify_relative_error"].as_f64().unwrap() <= 1e-4);
    assert!(v["parameters_after"].as_i64() < v["parameters_before"].as_i64());
    assert!(v["macs_after"].as_i64() < v["macs_before"].as_i64());
    assert!(v["file_bytes_after"].as_u64() < v["file_bytes_before"].as_u64());

    // PyTorch loads and runs it.
    let check = "import sys, torch\nm = torch.jit.load(sys.argv[1])\nprint(tuple(m(torch.randn(2, 3, 8, 8)).shape), tuple(m.a.weight.shape))";
    let printed = common::run_python(check, &[&out]).unwrap();
    assert_eq!(printed.trim(), "(2, 5) (16, 16, 3, 3)");

    // Global ranking with widths rounded up to multiples of 8; --n 1.
    let v = shrink_json(
        i,
        o,
        &[
            "--amount",
            "0.5",
            "--global",
            "--round-to",
            "8",
            "--n",
            "1",
            "--verify",
        ],
    );
    for (name, before, after) in afters(&v) {
        assert!(
            after == before || after % 8 == 0,
            "{name}: {after} of {before} is not a multiple of 8"
        );
    }

    // --params: only the groups that `a` produces.
    let v = shrink_json(i, o, &["--amount", "0.5", "--params", "a.*"]);
    let changed: Vec<String> = afters(&v)
        .into_iter()
        .filter(|(_, b, a)| a != b)
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(changed, vec!["a (conv2d output channels)".to_string()]);

    // The exact route on an unpruned model removes nothing: said on one line, exit 1, nothing
    // written (it exited 0 having shrunk nothing before issue 25).
    let nothing = dir.path().join("nothing.pt");
    let r = shrink(&[
        i,
        "-o",
        nothing.to_str().unwrap(),
        "--exact",
        "--input-shape",
        "1,3,8,8",
    ]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("nothing could be shrunk") && err.contains("none entirely zero"),
        "{err}"
    );
    assert!(!nothing.exists());

    // Errors: one line, status 1 (bad input) or 2 (arguments), no output file.
    let missing = dir.path().join("missing.pt");
    let fresh = dir.path().join("fresh.pt");
    let r = shrink(&[
        missing.to_str().unwrap(),
        "-o",
        fresh.to_str().unwrap(),
        "--amount",
        "0.5",
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&r.stderr).trim().lines().count(), 1);
    assert!(!fresh.exists());
    let r = shrink(&[
        i,
        "-o",
        fresh.to_str().unwrap(),
        "--amount",
        "0.5",
        "--input-shape",
        "1,x",
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--input-shape"));
    let r = shrink(&[
        i,
        "-o",
        fresh.to_str().unwrap(),
        "--amount",
        "0.5",
        "--n",
        "3",
    ]);
    assert_eq!(r.status.code(), Some(1));
    let r = shrink(&[i, "-o", fresh.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "no --amount nor --exact");
    assert!(!fresh.exists());
}

/// A model that takes token ids (an embedding, then linear layers) shrinks with
/// `--input-dtype int64 --input-range 0,VOCAB` (random floats were fed into the embedding
/// before issue 25, and the forward failed); the latency says what it timed.
#[test]
fn token_ids_as_the_example_input() {
    let dir = common::tempdir();
    let input = dir.path().join("lm.pt");
    let script = "import sys, torch, torch.nn as nn\ntorch.manual_seed(0)\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.emb = nn.Embedding(100, 16)\n        self.up = nn.Linear(16, 32)\n        self.down = nn.Linear(32, 4)\n    def forward(self, ids):\n        return self.down(torch.relu(self.up(self.emb(ids))))\ntorch.jit.save(torch.jit.script(M().eval()), sys.argv[1])\n";
    common::run_python(script, &[&input]).expect("this test needs TCH_PRUNE_PYTHON with torch");
    let out = dir.path().join("small.pt");
    let said = Cli::new("shrink")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .flags("--amount 0.5 --input-shape 2,8 --input-dtype int64 --input-range 0,100 --verify --runs 3")
        .ok();
    assert!(
        said.contains("16 up (linear output features)")
            || said.contains("up (linear output features)"),
        "{said}"
    );
    assert!(said.contains("the median of 3 forward passes"), "{said}");
    assert!(out.is_file());
    let r = Cli::new("shrink")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("x.pt"))
        .flags("--amount 0.5 --input-shape 2,8 --input-dtype int64")
        .run();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--input-range LOW,HIGH"));
    // Floats into the embedding: libtorch's whole error, the script's traceback included, on
    // one line (only its last line was shown before issue 25).
    let r = Cli::new("shrink")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("x.pt"))
        .flags("--amount 0.5 --input-shape 2,8")
        .run();
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("libtorch's whole message")
            && err.contains("Traceback of TorchScript")
            && err.contains("self.emb"),
        "{err}"
    );
}
