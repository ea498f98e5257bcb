# mxgate: `make run` starts the gateway on embedded defaults, `make test` runs every test.
# Both install the Debian packages they need first (scripts/install-deps.sh).

CARGO_TARGET_DIR ?= /var/tmp/mxgate-target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release
export MXGATE_BIN_DIR := $(BIN)
MXGATE_CORPUS ?= $(abspath $(firstword $(wildcard ../shared/corpus /work/shared/corpus) ../shared/corpus))
export MXGATE_CORPUS

.PHONY: deps build run test test-rust test-e2e lint bench fuzz clean

deps:
	@scripts/install-deps.sh

build: deps
	cargo build --release --workspace --bins

run: build
	BIN=$(BIN) scripts/run.sh

test: build test-rust test-e2e

test-rust:
	cargo test --release --workspace

test-e2e:
	python3 -W ignore::ResourceWarning -m unittest discover -s tests/e2e -p 'test_*.py' -v

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: build
	cargo bench -p mxgate-core --bench smtp_parser
	$(BIN)/mxgate-bench run relay

clean:
	cargo clean
