# The two commands of the README:
#   make demo   run the whole pipeline on an embedded Kafka cluster with generated traffic
#   make test   formatting, lints, unit tests and end-to-end tests against a real broker
#
# Tools that are missing are installed on first use, outside the clone:
#   TOOLS_DIR (default ~/.cache/shopstream/tools) holds the tansu broker binary.

SHELL := /bin/bash
TOOLS_DIR ?= $(HOME)/.cache/shopstream/tools
TANSU := $(TOOLS_DIR)/bin/tansu
CARGO ?= cargo

.PHONY: demo test tansu broker check-store bench fuzz help

help:
	@echo "make demo         run the pipeline end to end on an embedded cluster (no installs beyond cargo)"
	@echo "make test         fmt + clippy + unit + end-to-end tests (installs tansu on first run, ~20 min)"
	@echo "make broker       start a local tansu broker on 127.0.0.1:9092 with the shop.* topics"
	@echo "make check-store  open the demo store with pyarrow (installs pyarrow into a venv)"
	@echo "make bench        criterion benchmarks (figures go to BENCHMARKS.md)"
	@echo "make fuzz         fuzz the decoder for FUZZ_SECS seconds (default 600; installs cargo-fuzz)"

demo:
	$(CARGO) run --release --locked -- demo

test: tansu
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@# nextest (on the machine image) runs each test in its own process and closes with
	@# a summary line; plain cargo test is the fallback.
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		SHOPSTREAM_TANSU=$(TANSU) $(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		SHOPSTREAM_TANSU=$(TANSU) $(CARGO) test --workspace --locked --no-fail-fast; \
	fi

tansu:
	@scripts/install-tansu.sh "$(TOOLS_DIR)"

broker: tansu
	SHOPSTREAM_TOOLS=$(TOOLS_DIR) scripts/broker.sh

check-store:
	@scripts/check-store.sh demo-store

bench:
	$(CARGO) bench --locked -p shopstream-ingest --bench decode

FUZZ_SECS ?= 600
fuzz:
	@test -x $(TOOLS_DIR)/bin/cargo-fuzz || $(CARGO) install cargo-fuzz --locked --root $(TOOLS_DIR)
	@# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP lets the stable toolchain use them.
	cd fuzz && mkdir -p corpus/decode && RUSTC_BOOTSTRAP=1 $(TOOLS_DIR)/bin/cargo-fuzz fuzz run decode \
		corpus/decode seeds/decode -- -max_total_time=$(FUZZ_SECS) -max_len=65536
