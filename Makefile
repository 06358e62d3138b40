# EAML-SSM developer commands. `make run` and `make test` work on a fresh machine with only
# the Rust toolchain and Python 3.11: they create .venv/ and install everything from this repo.
SHELL := /bin/bash
VENV := $(abspath .venv)
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export PIP_CONSTRAINT := $(abspath constraints.txt)
# One torch thread per process: faster on the 2-core machines this project targets.
export OMP_NUM_THREADS ?= 1

.PHONY: setup run test lint rust-test py-test loom bench fuzz clean wheels

$(VENV)/.deps: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.9,<2"
	touch $@

# Builds rust_buffer (release) and installs it with eaml_ssm and all dependencies into .venv.
setup: $(VENV)/.deps
	maturin develop --release --extras dev -q

run: setup
	$(PY) -m eaml_ssm

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	ruff check .
	ruff format --check .
	$(PY) -m mypy eaml_ssm
	$(PY) -m mypy.stubtest rust_buffer

rust-test:
	cargo test --release

# Loom model checks of the slot protocol (exhaustive interleavings; separate build dir).
loom:
	RUSTFLAGS="--cfg loom" cargo test --release -p rust_buffer --test loom --target-dir target/loom

py-test: setup
	$(PY) -m pytest -q

test: setup lint rust-test loom py-test

# The two distributions, into dist/: rust-buffer (the store, NumPy only; maturin, abi3) and
# eaml-ssm (pure Python, requires rust-buffer). `pip install dist/*.whl` installs both.
wheels: $(VENV)/.deps
	cd rust_buffer && maturin build --release --out ../dist
	$(PY) -m pip wheel -q --no-deps -w dist .

bench: setup
	$(PY) benchmarks/bench_buffer.py

clean:
	rm -rf target dist $(VENV) rust_buffer/_rust_buffer*.so
