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
	@echo "no benchmarks yet"

# --- QEMU: a patched QEMU 7.2 running add-cow through the library (owner: qemu) ---
# See docs/QEMU.md. Needs root (apt) and network for the first run.
.PHONY: qemu qemu-test
qemu:
	scripts/qemu-build.sh

qemu-test: qemu
	scripts/qemu-test.sh

clean:
	$(CARGO) clean
	rm -rf c-tests/bin build
