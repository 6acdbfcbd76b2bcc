# The two set-up-free commands of the README: `make demo` and `make test`.
# Both install what a fresh Debian machine with a Rust toolchain and gcc lacks (libclang-dev,
# needed by the userfaultfd crate's bindgen), then build with cargo. `make test` also installs
# what the Linux-guest tests need (QEMU, busybox-static, the cloud kernel's headers, cpio) and
# redis-server (the Redis store's tests start their own on a loopback port).

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: deps test-deps demo test

TEST_PKGS := qemu-system-x86 busybox-static linux-headers-cloud-amd64 cpio redis-server openssl

deps:
	@if ! dpkg -s libclang-dev >/dev/null 2>&1; then \
	    echo "memout: installing libclang-dev (needed to build the userfaultfd crate)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libclang-dev; \
	fi
	@command -v gcc >/dev/null || { echo "memout: gcc is required to build the guest programs"; exit 1; }

test-deps: deps
	@missing=$$(for p in $(TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "memout: installing" $$missing "(for the Linux-guest and Redis tests)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: deps
	$(CARGO) run --release -q -p memout-vmm --bin memout -- demo

test: test-deps
	@if [ -n "$$MEMOUT_ALLOW_SKIP" ]; then \
	    echo "################################################################"; \
	    echo "MEMOUT_ALLOW_SKIP=$$MEMOUT_ALLOW_SKIP: tests missing these pieces are SKIPPED, not run"; \
	    echo "################################################################"; \
	fi
	$(CARGO) test --workspace
