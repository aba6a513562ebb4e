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

.PHONY: demo test tansu broker fmt lint unit check-store clean-demo help

help:
	@echo "make demo         run the pipeline end to end on an embedded cluster (no installs beyond cargo)"
	@echo "make test         fmt + clippy + unit + end-to-end tests (installs tansu on first run, ~20 min)"
	@echo "make broker       start a local tansu broker on 127.0.0.1:9092 with the shop.* topics"
	@echo "make check-store  open the demo store with pyarrow (installs pyarrow into a venv)"

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
