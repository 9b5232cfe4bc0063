# cowblk: build, test, demo, bench.
# Sections are owned by topic; keep each target's recipe in its section.
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all build test rust-test ctest demo bench clean

all: build

build:
	$(CARGO) build --release

# The whole test suite (README's test command).
test: rust-test ctest

rust-test:
	$(CARGO) test --release

# --- C ABI: header, C tests, demo (owner: ffi) ---
ctest: build
	@echo "no C tests yet"

demo: build
	@echo "no demo yet"

# --- benchmarks (owner: bench) ---
bench:
	$(CARGO) bench --bench addcow

clean:
	$(CARGO) clean
	rm -rf c-tests/bin build
