# hoptrace — one entry point for set-up, tests and the demo.
# Everything is idempotent: a second run with nothing to install takes a few seconds.

SHELL := /bin/bash
# rustup puts cargo here; CI's environment may not have it on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := python3-bpfcc bpftool linux-headers-amd64 iproute2 iptables conntrack \
	tcpdump tshark wireshark-common docker.io busybox-static iperf3 tmux python3-venv python3-pip \
	nftables zsh
APT_STAMP := .stamp-apt
VENV_STAMP := $(VENV)/.installed
CORE_STAMP := .stamp-core
RUST_SRC := Cargo.toml $(wildcard Cargo.lock) $(shell find crates -path crates/fuzz -prune -o \( -name '*.rs' -o -name Cargo.toml \) -print 2>/dev/null)

.PHONY: install test lint typecheck unit demo fixtures bench clean rust-check wheel

MAN_PAGE := $(VENV)/share/man/man1/hoptrace.1

install: $(APT_STAMP) $(VENV_STAMP) $(CORE_STAMP) $(MAN_PAGE)

# dpkg-query answers in milliseconds, so only a missing package costs an apt run.
$(APT_STAMP): Makefile
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PKGS) 2>/dev/null \
	    | awk '$$NF!="installed"{print $$1}'; \
	  for p in $(APT_PKGS); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done | sort -u); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

# The venv sees the system site-packages: bcc's Python module only exists as
# Debian's python3-bpfcc (PyPI's "bcc" is an unrelated project).
# Dependencies first (maturin among them), then the core: `maturin develop` builds
# crates/hoptrace-py in release mode and installs the project editable, with the
# extension written into tracer/ (git-ignored). Cargo's own incremental build
# makes a second run with nothing changed take seconds; the stamp makes it free.
$(VENV_STAMP): pyproject.toml $(APT_STAMP)
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check \
	    $$($(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	        print(" ".join(repr(d) for d in p["dependencies"] + p["optional-dependencies"]["dev"]))' | tr -d "'")
	@rm -f $(CORE_STAMP)
	@touch $@

$(CORE_STAMP): $(VENV_STAMP) $(RUST_SRC)
	@rm -f tracer/_core*.so
	@echo "building the Rust core (release)…"
	@VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release > .stamp-core.log 2>&1 \
	    || { cat .stamp-core.log; echo "the Rust core did not build (output above)"; exit 1; }
	@touch $@

# hoptrace(1) and the bash / zsh completions, generated from the CLI's parser into .venv/share
# (man finds it through PATH; README says how to source the completions). Files whose text
# did not change are not rewritten; the touch keeps make from asking again.
$(MAN_PAGE): $(VENV_STAMP) tracer/cli.py tracer/manpage.py tracer/lab/scenarios.py
	@$(PY) -m tracer.manpage --install $(VENV) >/dev/null
	@touch $@

# A wheel for hosts without Rust: Python, bcc (Debian's python3-bpfcc) and this file.
wheel: $(VENV_STAMP)
	$(VENV)/bin/maturin build --release --out dist

rust-check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test -p hoptrace-core --quiet

lint: install
	$(VENV)/bin/ruff check tracer probes tui tests bench

typecheck: install
	$(VENV)/bin/mypy tracer tui

test: install rust-check lint typecheck
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=20 $(PYTEST_ARGS)

unit: install
	$(VENV)/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/hoptrace lab demo

fixtures: install
	$(VENV)/bin/python -m tracer.lab.fixtures

bench: install
	$(VENV)/bin/python bench/run_all.py

clean:
	rm -rf $(VENV) $(APT_STAMP) $(CORE_STAMP) tracer/_core*.so target dist .mypy_cache .ruff_cache .pytest_cache
