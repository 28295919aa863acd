#!/usr/bin/env bash
# Builds examples/downstream (a crate depending on tch-prune by path, set up as the README's
# "Using tch-prune in your crate" says) and runs it with an empty environment: it must find
# libtorch through its run path alone, have libtorch's CUDA part linked and loaded when libtorch
# has one, prune, train and save. Run by `make test` (which sets LIBTORCH, as a user must).
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=examples/downstream/Cargo.toml
# This repository's target folder: tch and torch-sys are not compiled a second time.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --locked --manifest-path "$manifest"
binary="$CARGO_TARGET_DIR/debug/tch-prune-downstream"

# The library alone: no CLI crates in the dependency's tree.
for crate in clap indicatif; do
  if cargo tree --locked --manifest-path "$manifest" -e normal -i "$crate" >/dev/null 2>&1; then
    echo "downstream: $crate is in the tree of a dependency with default-features = false" >&2
    exit 1
  fi
done

lib=$(env -i "$binary" --libtorch-lib)
needed=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
echo "downstream: $binary needs: $needed"
for so in libtorch.so $( [ -e "$lib/libtorch_cuda.so" ] && echo libtorch_cuda.so ); do
  if ! grep -qw "$so" <<<"$needed"; then
    echo "downstream: $binary does not need $so (libtorch: $lib)" >&2
    exit 1
  fi
done

out="$CARGO_TARGET_DIR/downstream"
rm -rf "$out" && mkdir -p "$out"
env -i "$binary" "$out/pruned.safetensors"
test -s "$out/pruned.safetensors"
echo "downstream: ok"
