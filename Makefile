# cowblk: build, test, demo, bench.
# Sections are owned by topic; keep each target's recipe in its section.
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all build check test rust-test ctest demo bench clean

all: build

build:
	$(CARGO) build --release

# The whole test suite (README's test command): the patched QEMU's tests,
# the nbdkit plugin's tests, a bounded fuzz run, then the Rust and C tests.
check:
	$(MAKE) qemu-test
	$(MAKE) nbdkit-test
	FUZZ_SEED=$${FUZZ_SEED:-1} $(MAKE) fuzz
	$(MAKE) test

# The Rust and C tests alone (no QEMU build, no fuzzing).
test: rust-test ctest

# The parity suite runs on its own with its output shown: it prints the
# list of known differences from QEMU's tools (tests/parity/known.txt).
# The tests' scratch directories go under build/test-tmp (TMPDIR), emptied
# before the run and removed after a passing one, so that repeated runs on
# one machine do not fill its disk (a failing run leaves them to look at).
TEST_TMP := $(CURDIR)/build/test-tmp
rust-test:
	rm -rf $(TEST_TMP) && mkdir -p $(TEST_TMP)
	TMPDIR=$(TEST_TMP) $(CARGO) test --release -- --skip our_tools_answer_as_qemus_do
	TMPDIR=$(TEST_TMP) $(CARGO) test --release --test parity -- --nocapture
	rm -rf $(TEST_TMP)

# --- C ABI: header, C tests, demo (owner: ffi) ---
# C programs build against target/release through build/lib, which holds the
# soname links an installed library has. Tests: c-tests/test_*.c, one
# behaviour each; test_link is also linked statically.
.PHONY: header header-check c-header c-libs c-symbols ctest ctest-valgrind ctest-asan install
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
REL := target/release
CLIB := build/lib
C_STD_FLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wpedantic -Werror -O1 -g
C_FLAGS := $(C_STD_FLAGS) -Iinclude -Ic-tests $(CTEST_CFLAGS)
C_LINK := -L$(CLIB) -lcowblk -Wl,-rpath,$(abspath $(CLIB)) -lpthread
C_STATIC := $(REL)/libcowblk.a -lgcc_s -lutil -lrt -lpthread -lm -ldl
CBIN ?= c-tests/bin
C_TESTS := $(patsubst c-tests/%.c,$(CBIN)/%,$(wildcard c-tests/test_*.c)) \
	$(CBIN)/test_link_static $(CBIN)/test_installed
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include

# Rewrites include/cowblk.h from src/ffi (tests/header.rs fails while stale).
header:
	COWBLK_BLESS_HEADER=1 $(CARGO) test --release --test header

# The header build.rs generated must be the committed one.
header-check: build
	@gen=$$(ls -t $(REL)/build/cowblk-*/out/cowblk.h | head -n 1); \
	cmp -s "$$gen" include/cowblk.h || \
	{ echo "include/cowblk.h is stale: run 'make header' and commit it"; exit 1; }

# Cargo decides whether the libraries are current; depending on them relinks.
$(REL)/libcowblk.so $(REL)/libcowblk.a: build ;

c-libs: build
	@mkdir -p $(CLIB)
	@ln -sf $(abspath $(REL)/libcowblk.so) $(CLIB)/libcowblk.so.$(SOMAJOR)
	@ln -sf libcowblk.so.$(SOMAJOR) $(CLIB)/libcowblk.so

$(CBIN)/%: c-tests/%.c c-tests/util.h include/cowblk.h | c-libs
	@mkdir -p $(CBIN)
	$(CC) $(C_FLAGS) $< -o $@ $(C_LINK)

$(CBIN)/test_dlopen: c-tests/test_dlopen.c c-tests/util.h include/cowblk.h | c-libs
	@mkdir -p $(CBIN)
	$(CC) $(C_FLAGS) $< -o $@ -ldl

$(CBIN)/test_link_static: c-tests/test_link.c c-tests/util.h include/cowblk.h $(REL)/libcowblk.a | c-libs
	@mkdir -p $(CBIN)
	$(CC) $(C_FLAGS) $< -o $@ $(C_STATIC)

# test_link again, built the way users will: `make install` into a scratch
# prefix, flags from pkg-config, the soname resolved through the symlinks.
C_PREFIX := $(abspath build/prefix)
$(CBIN)/test_installed: c-tests/test_link.c c-tests/util.h include/cowblk.h cowblk.pc.in \
	    $(REL)/libcowblk.so $(REL)/libcowblk.a | c-libs
	@mkdir -p $(CBIN)
	@rm -rf $(C_PREFIX) && $(MAKE) -s install PREFIX=$(C_PREFIX) >/dev/null
	$(CC) $(C_STD_FLAGS) -Ic-tests $< -o $@ \
	    $$(PKG_CONFIG_PATH=$(C_PREFIX)/lib/pkgconfig pkg-config --cflags --libs cowblk) \
	    -Wl,-rpath,$(C_PREFIX)/lib

# The header alone compiles as C99 and, where a C++ compiler exists, C++11.
c-header:
	@mkdir -p build
	@printf '#include "cowblk.h"\nint main(void) { return cowblk_abi_version() != COWBLK_ABI_VERSION; }\n' > build/header-only.c
	$(CC) -std=c99 -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/header-only.c -o build/header-only.o
	@if command -v $(CXX) >/dev/null 2>&1; then \
	    cp build/header-only.c build/header-only.cc && set -x && \
	    $(CXX) -std=c++11 -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/header-only.cc -o build/header-only-cc.o; \
	else echo "no C++ compiler: C++ header check skipped"; fi

# Exported symbols must all carry the prefix.
c-symbols: build
	@bad=$$(nm -D --defined-only $(REL)/libcowblk.so | awk '$$2 == "T" && $$3 !~ /^cowblk_/ {print $$3}'); \
	[ -z "$$bad" ] || { echo "exported without the cowblk_ prefix: $$bad"; exit 1; }

ctest: header-check c-header c-symbols $(C_TESTS)
	COWBLK_LIB=$(abspath $(REL)/libcowblk.so) sh c-tests/run.sh $(C_TESTS)

# The same tests under valgrind (slow; not part of `make test`).
ctest-valgrind: header-check $(C_TESTS)
	COWBLK_LIB=$(abspath $(REL)/libcowblk.so) \
	VALGRIND="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
	sh c-tests/run.sh $(C_TESTS)

# The same tests built with AddressSanitizer and UBSan (C side only).
ctest-asan:
	$(MAKE) ctest CBIN=build/ctest-asan \
	    CTEST_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer"

build/demo/demo: examples/demo.c include/cowblk.h | c-libs
	@mkdir -p build/demo
	$(CC) $(C_STD_FLAGS) -Iinclude $< -o $@ $(C_LINK)

# Makes a base image and an add-cow overlay in build/demo/run, writes,
# reads back, verifies and prints the allocation map.
demo: build/demo/demo
	@rm -rf build/demo/run && mkdir -p build/demo/run
	build/demo/demo build/demo/run

# Header, shared library with soname links, static library, pkg-config file.
install: build
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 644 include/cowblk.h $(DESTDIR)$(INCLUDEDIR)/cowblk.h
	install -m 755 $(REL)/libcowblk.so $(DESTDIR)$(LIBDIR)/libcowblk.so.$(VERSION)
	ln -sf libcowblk.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libcowblk.so.$(SOMAJOR)
	ln -sf libcowblk.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/libcowblk.so
	install -m 644 $(REL)/libcowblk.a $(DESTDIR)$(LIBDIR)/libcowblk.a
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    cowblk.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/cowblk.pc
	$(MAKE) -s install-tools
	$(MAKE) -s install-nbdkit

# --- The tools' manual (owner: cli2) ---
# man/*.1 and docs/CLI.md's option lists are generated from the tools'
# option tables (src/bin/cowblk-*/table.rs); tests/cli_docs.rs fails while
# the committed copies are stale, and `make man` rewrites them.
.PHONY: man install-tools
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man

man:
	COWBLK_BLESS_DOCS=1 $(CARGO) test --release --test cli_docs

install-tools: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 755 $(REL)/cowblk-img $(REL)/cowblk-io $(DESTDIR)$(BINDIR)/
	install -m 644 man/cowblk-img.1 man/cowblk-io.1 $(DESTDIR)$(MANDIR)/man1/

# --- nbdkit plugin: serve any image over NBD (owner: nbd) ---
# See README's "Serve it". scripts/nbdkit-deps.sh installs nbdkit, its plugin
# headers and libnbd's tools from Debian when missing.
.PHONY: nbdkit nbdkit-test bench-nbd install-nbdkit
NBDKIT_PLUGIN := build/nbdkit/nbdkit-cowblk-plugin.so
NBDKIT_CFLAGS = $(C_STD_FLAGS) -fPIC -shared -Iinclude $$(pkg-config --cflags nbdkit)
nbdkit:
	scripts/nbdkit-deps.sh
	$(MAKE) $(NBDKIT_PLUGIN)

$(NBDKIT_PLUGIN): nbdkit/cowblk.c include/cowblk.h | c-libs
	@mkdir -p build/nbdkit
	$(CC) $(NBDKIT_CFLAGS) $< -o $@ $(C_LINK)

nbdkit-test: nbdkit
	scripts/nbdkit-test.sh

# fio over NBD: our plugin against nbdkit's file plugin and qemu-nbd.
bench-nbd: nbdkit
	scripts/nbdkit-deps.sh bench
	scripts/bench-nbd.sh

# Installed where nbdkit looks for plugins (`nbdkit cowblk file=...`) when
# installing to the default prefix, else under LIBDIR (load it by path).
NBDKIT_PLUGINDIR ?= $(if $(filter /usr/local,$(PREFIX)),$(shell pkg-config --variable=plugindir nbdkit 2>/dev/null),$(LIBDIR)/nbdkit/plugins)
install-nbdkit: | c-libs
	@if [ -z "$(NBDKIT_PLUGINDIR)" ] || [ ! -e /usr/include/nbdkit-plugin.h ]; then \
	    echo "nbdkit plugin not installed: nbdkit-plugin-dev is missing (make nbdkit installs it)"; \
	else \
	    mkdir -p build/nbdkit && \
	    $(CC) $(NBDKIT_CFLAGS) nbdkit/cowblk.c -o build/nbdkit/installed-plugin.so \
	        -L$(CLIB) -lcowblk -Wl,-rpath,$(LIBDIR) -lpthread && \
	    install -d $(DESTDIR)$(NBDKIT_PLUGINDIR) && \
	    install -m 755 build/nbdkit/installed-plugin.so \
	        $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-cowblk-plugin.so; \
	fi

# --- benchmarks (owner: bench) ---
.PHONY: bench-qemu
bench:
	$(CARGO) bench --bench addcow
	$(CARGO) bench --bench qcow2_read
	$(CARGO) bench --bench qcow2_write
	$(CARGO) bench --bench capi_read
	scripts/bench-convert.sh
	$(MAKE) bench-nbd

# qemu-img bench in the patched QEMU: add-cow and cowblk-qcow2 against
# QEMU's qcow2 in the same run (docs/BENCH.md). BENCH_RUNS, BENCH_COUNT,
# BENCH_DEPTHS override the defaults (3, 100000, "1 16").
bench-qemu: qemu
	scripts/bench-qemu.sh

# --- fuzzing ---
# Each cargo-fuzz target (qcow2_parse, qcow2_read, qcow2_write, addcow_parse,
# addcow_io) for FUZZ_SECONDS: 5 x 60 s = 5 minutes in CI. Needs cargo-fuzz and a C++
# compiler. Lower FUZZ_SECONDS if more targets come.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

# --- QEMU: a patched QEMU 7.2 running add-cow through the library (owner: qemu) ---
# See docs/QEMU.md. Needs root (apt) and network for the first run.
# qemu-libqcow2: the second configuration (build/qemu/build-libqcow2), the
# library's qcow2 registered as "qcow2" and QEMU's not built, for QEMU's own
# qcow2 iotests (qemu-iotests-qcow2 runs all of them; qemu-test the list
# that passes).
.PHONY: qemu qemu-test qemu-libqcow2 qemu-iotests-qcow2
qemu:
	scripts/qemu-build.sh

qemu-libqcow2: qemu
	COWBLK_AS_QCOW2=1 COWBLK_SKIP_INSTALL=1 scripts/qemu-build.sh

qemu-test: qemu qemu-libqcow2
	scripts/qemu-test.sh

qemu-iotests-qcow2: qemu-libqcow2
	scripts/qemu-iotests-qcow2.sh

clean:
	$(CARGO) clean
	rm -rf c-tests/bin build
