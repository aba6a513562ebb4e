# The two commands of the README:
#   make demo   run the whole pipeline on an embedded Kafka cluster with generated traffic
#   make test   formatting, lints, unit tests and end-to-end tests against a real broker
#
# Tools that are missing are installed on first use, outside the clone:
#   TOOLS_DIR (default ~/.cache/shopstream/tools) holds the tansu broker binary, and moto's
#   S3 server in a venv when the machine has none (scripts/install-moto.sh).

SHELL := /bin/bash
TOOLS_DIR ?= $(HOME)/.cache/shopstream/tools
TANSU := $(TOOLS_DIR)/bin/tansu
CARGO ?= cargo

# .cargo/config.toml builds for x86-64-v3. On a CPU that lacks any target feature rustc
# enables for it (rustc's own list, against what rustc detects on this machine), build for
# the baseline instead (slower training), unless RUSTFLAGS is already set. Off x86-64 both
# lists are empty.
X86_64_V3 := $(shell rustc --print cfg -C target-cpu=x86-64-v3 2>/dev/null | grep '^target_feature=')
HOST_FEATURES := $(shell rustc --print cfg -C target-cpu=native 2>/dev/null | grep '^target_feature=')
ifneq ($(filter-out $(HOST_FEATURES),$(X86_64_V3)),)
export RUSTFLAGS ?= -C target-cpu=x86-64
endif

.PHONY: demo test tansu broker check-store bench bench-e2e bench-store-s3 fuzz help

help:
	@echo "make demo         run the pipeline end to end on an embedded cluster (no installs beyond cargo)"
	@echo "make test         fmt + clippy + unit + end-to-end tests (installs tansu on first run, ~20 min)"
	@echo "make broker       start a local tansu broker on 127.0.0.1:9092 with the shop.* topics"
	@echo "make check-store  read a store (STORE=DIR or s3://…) with pyarrow and DuckDB (installs them into a venv)"
	@echo "make bench-store-s3  store writes and queries, local disk vs S3 (moto), one run"
	@echo "make bench        criterion benchmarks: decode, features, trainer, store (figures go to BENCHMARKS.md)"
	@echo "make bench-e2e    the whole job vs a bare librdkafka consumer on the same topics, one run"
	@echo "                  (EVENTS=200000 ROUNDS=1; starts its own broker; scripts/bench-scale.sh)"
	@echo "make fuzz         fuzz the decoder for FUZZ_SECS seconds (default 600; installs cargo-fuzz)"

demo:
	$(CARGO) run --release --locked -- demo

test: tansu
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@# nextest (on the machine image) runs each test in its own process and closes with
	@# a summary line; plain cargo test is the fallback. The store tests on S3 run
	@# against moto's server, found (or installed) once here.
	moto="$$(scripts/install-moto.sh "$(TOOLS_DIR)")"; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		SHOPSTREAM_TANSU=$(TANSU) SHOPSTREAM_MOTO_SERVER="$$moto" $(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		SHOPSTREAM_TANSU=$(TANSU) SHOPSTREAM_MOTO_SERVER="$$moto" $(CARGO) test --workspace --locked --no-fail-fast; \
	fi

tansu:
	@scripts/install-tansu.sh "$(TOOLS_DIR)"

broker: tansu
	SHOPSTREAM_TOOLS=$(TOOLS_DIR) scripts/broker.sh

STORE ?= demo-store
check-store:
	@scripts/check-store.sh "$(STORE)"

bench-store-s3:
	@scripts/bench-store-s3.sh

bench:
	$(CARGO) bench --locked -p shopstream-ingest --bench decode
	$(CARGO) bench --locked -p shopstream-features --bench features
	$(CARGO) bench --locked -p shopstream-trainer --bench train
	$(CARGO) bench --locked -p shopstream-sinks --bench store

# One instance with 1 and 2 workers against a bare consumer, without the group and live
# parts (scripts/bench-scale.sh runs those too when called directly).
EVENTS ?= 200000
ROUNDS ?= 1
bench-e2e:
	@THROUGHPUT_GROUPS= scripts/bench-scale.sh $(EVENTS) $(ROUNDS) 0

FUZZ_SECS ?= 600
fuzz:
	@test -x $(TOOLS_DIR)/bin/cargo-fuzz || $(CARGO) install cargo-fuzz --locked --root $(TOOLS_DIR)
	@# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP lets the stable toolchain use them.
	cd fuzz && mkdir -p corpus/decode && RUSTC_BOOTSTRAP=1 $(TOOLS_DIR)/bin/cargo-fuzz fuzz run decode \
		corpus/decode seeds/decode -- -max_total_time=$(FUZZ_SECS) -max_len=65536
