# Every target provisions libtorch first (once per user; see scripts/torch-env.sh).
SHELL := /bin/bash
TORCH_ENV = eval "$$(scripts/torch-env.sh)"

.PHONY: test demo build bench fmt lint

## Runs the whole test suite (unit, integration, parity with PyTorch, doc tests).
test:
	$(TORCH_ENV) && cargo test --all-targets && cargo test --doc

## The main job: trains, prunes iteratively with fine-tuning, exports TorchScript.
demo:
	$(TORCH_ENV) && cargo run --example demo

## Release binaries (target/release/tch-prune).
build:
	$(TORCH_ENV) && cargo build --release

lint:
	$(TORCH_ENV) && cargo fmt --check && cargo clippy --all-targets -- -D warnings
