# rbuild — see README.md. Every target that needs containerd or the test
# registries depends on `setup`, which installs and starts them (idempotent).

CARGO ?= cargo
RBUILD := target/release/rbuild

.PHONY: setup build demo test unit lint bench clean-fixtures

setup:
	bash fixtures/setup.sh

build:
	$(CARGO) build --release --bin rbuild

# Runs the demo pipeline twice: the second run is fully cached.
demo: setup build
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

bench: setup build
	bash bench/run.sh

clean-fixtures:
	bash fixtures/teardown.sh --purge
