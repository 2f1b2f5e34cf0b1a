# rbuild — see README.md. Every target that needs containerd or the test
# registries depends on `setup`, which installs and starts them (idempotent).

CARGO ?= cargo
RBUILD := target/release/rbuild

.PHONY: setup setup-demo build deb demo test unit faults lint bench clean-fixtures

setup:
	bash fixtures/setup.sh

# Only what the demo needs (no Rust toolchain image, service images or dockerd).
setup-demo:
	bash fixtures/setup.sh --demo

build:
	$(CARGO) build --release --bin rbuild

# The Debian package of the release build (target/debian/rbuild_VERSION_ARCH.deb),
# for CI runners: `apt-get install ./rbuild_*.deb` (examples/ci/README.md).
deb: build
	bash packaging/deb.sh $(RBUILD) target/debian

# Runs the demo pipeline twice: the second run is fully cached.
demo: setup-demo build
	$(RBUILD) run examples/hello/pipeline.rs
	$(RBUILD) run examples/hello/pipeline.rs

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests (pure logic) and integration tests (real containerd, runc, registries).
test: setup lint
	$(CARGO) test --workspace

unit:
	$(CARGO) test --workspace --lib --bins

# The fault suite alone: every tests/faults_*.rs (kills at named kill points,
# full disks, registry faults, planted symlinks). `make test` runs it too.
# Kill points exist only in debug builds, which is what `cargo test` runs.
FAULT_TESTS := $(patsubst tests/%.rs,%,$(wildcard tests/faults_*.rs))
faults: setup
	$(CARGO) test $(addprefix --test ,$(FAULT_TESTS))

bench: setup build
	bash bench/run.sh

clean-fixtures:
	bash fixtures/teardown.sh --purge
