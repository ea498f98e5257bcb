# mxgate: `make run` starts the gateway on embedded defaults, `make test` runs every test.
# Both install the Debian packages they need first (scripts/install-deps.sh).

CARGO_TARGET_DIR ?= /var/tmp/mxgate-target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release
export MXGATE_BIN_DIR := $(BIN)
MXGATE_CORPUS ?= $(abspath $(firstword $(wildcard ../shared/corpus /work/shared/corpus) ../shared/corpus))
export MXGATE_CORPUS

.PHONY: deps build run test test-rust test-e2e lint bench fuzz clean

# Fuzzing: cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP), FUZZ_SECONDS per target, seeded
# from the corpus. Crashes land in fuzz/artifacts; keep them as regression tests.
FUZZ_SECONDS ?= 900

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
	python3 scripts/mime_parity.py --threshold 0.99 --show 20
	python3 scripts/rules_parity.py --mxgate $(BIN)/mxgate --sample 60 --min 99.5 --min-evals 99.5 \
		--list-limit 30 $(MXGATE_CORPUS)/ham $(MXGATE_CORPUS)/spam $(MXGATE_CORPUS)/hard_ham \
		$(MXGATE_CORPUS)/mime-edge
	python3 scripts/sa_restore_parity.py --mxgate $(BIN)/mxgate --corpus $(MXGATE_CORPUS) --train 250 --test 75 --min 95
	python3 scripts/av_parity.py --mxgate $(BIN)/mxgate --corpus $(MXGATE_CORPUS)
	python3 scripts/ocr_parity.py --mxgate $(BIN)/mxgate --corpus $(MXGATE_CORPUS) --min 95
	python3 -W ignore::ResourceWarning -m unittest discover -s tests/e2e -p 'test_*.py' -v

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	# The fuzz targets live outside the workspace: checked here so an API change cannot leave
	# them unbuildable unnoticed.
	RUSTC_BOOTSTRAP=1 cargo check --manifest-path fuzz/Cargo.toml --bins

bench: build
	cargo bench -p mxgate-core --bench smtp_parser
	cargo bench -p mxgate-scanners --bench rules
	cargo bench -p mxgate-scanners --bench av
	cargo bench -p mxgate-ocr --bench ocr
	$(BIN)/mxgate-bench run relay

fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && mkdir -p corpus/mime corpus/smtp_session corpus/smtp_command corpus/rules corpus/content corpus/ocr_prepare corpus/bayes
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O mime corpus/mime $(MXGATE_CORPUS)/mime-edge -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O smtp_session corpus/smtp_session seeds/smtp -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O smtp_command corpus/smtp_command seeds/smtp -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O rules corpus/rules seeds/rules $(MXGATE_CORPUS)/mime-edge -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O content corpus/content $(MXGATE_CORPUS)/mime-edge $(MXGATE_CORPUS)/spam -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=4096
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O ocr_prepare corpus/ocr_prepare seeds/images -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O bayes corpus/bayes seeds/bayes $(MXGATE_CORPUS)/mime-edge $(MXGATE_CORPUS)/spam -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=4096

clean:
	cargo clean
