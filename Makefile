# Every target provisions libtorch first (once per user; see scripts/torch-env.sh).
SHELL := /bin/bash
TORCH_ENV = eval "$$(scripts/torch-env.sh)"

.PHONY: test demo gradual build bench lint

## Runs the whole test suite (unit, integration, parity with PyTorch, doc tests).
test:
	$(TORCH_ENV) && cargo test --all-targets && cargo test --doc

## The main job: loads a PyTorch-trained CNN, prunes it iteratively with fine-tuning, exports TorchScript.
demo:
	$(TORCH_ENV) && cargo run --example demo

## Pruning while training: the digits CNN trained from scratch in Rust (dense, gradual to 90 %, rewound, 2:4); writes target/gradual/curves.csv and curves.svg.
gradual:
	$(TORCH_ENV) && cargo run --example gradual

## Release binaries (target/release/tch-prune).
build:
	$(TORCH_ENV) && cargo build --release

## Formatting, clippy, and the module graph (no cycles, layers respected, CONTRIBUTING.md current).
lint:
	$(TORCH_ENV) && cargo fmt --check && cargo clippy --all-targets -- -D warnings
	python3 scripts/module_graph.py --check CONTRIBUTING.md

## The crate against PyTorch's own pruning, side by side (BENCH_SIZES=99M,470M to pick sizes).
bench:
	$(TORCH_ENV) && cargo build --release --example bench --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/bench.py
