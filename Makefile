# Every target provisions libtorch first (once per user; see scripts/torch-env.sh).
SHELL := /bin/bash
TORCH_ENV = eval "$$(scripts/torch-env.sh)"
# The comparisons with PyTorch fail instead of skipping when no Python torch is configured:
# `make test` cannot pass having compared nothing.
REQUIRE_PYTHON = export TCH_PRUNE_REQUIRE_PYTHON=1
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

.PHONY: test test-cuda downstream demo gradual build bench bench-hf lint msrv

## Runs the whole test suite (unit, integration, parity with PyTorch, doc tests), then builds and
## runs the downstream example crate.
test:
	$(TORCH_ENV) && $(REQUIRE_PYTHON) && cargo test --all-targets && cargo test --doc
	$(MAKE) downstream

## examples/downstream: a crate depending on this one by the README's route, built with this
## repository's target folder and run with an empty environment (no LD_LIBRARY_PATH, no LIBTORCH).
downstream:
	$(TORCH_ENV) && scripts/downstream.sh

## Exactly the CUDA tests (tests/cuda.rs), where no GPU or CUDA failing to load is a failure, not a skip.
test-cuda:
	$(TORCH_ENV) && TCH_PRUNE_REQUIRE_CUDA=1 cargo test --test cuda

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

## Builds the library and the CLI with the declared rust-version (needs rustup; CI runs it).
msrv:
	rustup toolchain install --profile minimal $(MSRV)
	$(TORCH_ENV) && cargo +$(MSRV) build --locked --lib --bins

## The crate against PyTorch's own pruning, side by side (BENCH_SIZES=99M,470M to pick sizes).
bench:
	$(TORCH_ENV) && cargo build --release --example bench --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/bench.py

## Width pruning of a Llama-shaped Hugging Face folder: tch-prune shrink beside Torch-Pruning
## (parameters, weight bytes, pruning time, CPU tokens/s before and after; scripts/bench_hf_shrink.py).
bench-hf:
	$(TORCH_ENV) && cargo build --release --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/bench_hf_shrink.py
