# Every target provisions libtorch first (once per user; see scripts/torch-env.sh).
SHELL := /bin/bash
TORCH_ENV = eval "$$(scripts/torch-env.sh)"
# The comparisons with PyTorch fail instead of skipping when no Python torch is configured:
# `make test` cannot pass having compared nothing.
REQUIRE_PYTHON = export TCH_PRUNE_REQUIRE_PYTHON=1
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

.PHONY: test test-cuda downstream demo gradual build bench bench-disk lint msrv llm-demo data-parallel bench-pt2 bench-hf bench-shrink-pt2

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

## Data-parallel training with pruning: the digits CNN on 2 ranks (Gloo over localhost), gradients all-reduced, masks checked identical at every pruning step, accuracy compared with one process.
data-parallel:
	$(TORCH_ENV) && cargo run --example data_parallel

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

## The crate against PyTorch's own pruning, side by side (BENCH_SIZES=99M,470M to pick sizes),
## then width pruning of a Llama-shaped folder beside Torch-Pruning (as `make bench-hf`).
bench:
	$(TORCH_ENV) && cargo build --release --example bench --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/bench.py
	$(TORCH_ENV) && $$TCH_PRUNE_PYTHON scripts/bench_hf_shrink.py

## The streamed CLI against the disk (issue 26): each case beside `cp` + sync and `dd
## oflag=direct` of the same file in the same run, and the out-of-core case (docs/write-path.md).
bench-disk:
	$(TORCH_ENV) && cargo build --release --bin tch-prune && BENCH_CASES=cli,cli-l1,cli-ln,cli-nm,out-of-core $$TCH_PRUNE_PYTHON scripts/bench.py

## Wanda and SparseGPT against magnitude on a small causal LM trained on Python's standard library
## (cached in ~/.cache/tch-prune/llm-demo-*; LLM_DEMO_STEPS=3000), and the references timed in the same run.
llm-demo:
	$(TORCH_ENV) && cargo build --release --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/llm_demo.py $${CARGO_TARGET_DIR:-target}/release/tch-prune --json $${CARGO_TARGET_DIR:-target}/llm-demo.json

## tch-prune on torch.export archives (.pt2): streamed, in memory, and PyTorch's load-prune-save (scripts/bench_pt2.py).
bench-pt2:
	$(TORCH_ENV) && cargo build --release --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/bench_pt2.py

## tch-prune shrink on torch.export archives beside the TorchScript shrink of the same weights
## (time, parameters, file size, the exported program's CPU latency; scripts/bench_shrink_pt2.py).
bench-shrink-pt2:
	$(TORCH_ENV) && cargo build --release --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/bench_shrink_pt2.py

## Width pruning of a Llama-shaped Hugging Face folder: tch-prune shrink beside Torch-Pruning
## (parameters, weight bytes, pruning time, CPU tokens/s before and after; scripts/bench_hf_shrink.py).
bench-hf:
	$(TORCH_ENV) && cargo build --release --bin tch-prune && $$TCH_PRUNE_PYTHON scripts/bench_hf_shrink.py
