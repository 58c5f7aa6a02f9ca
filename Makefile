# hoptrace — one entry point for set-up, tests and the demo.
# Everything is idempotent: a second run with nothing to install takes a few seconds.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := python3-bpfcc bpftool linux-headers-amd64 iproute2 iptables conntrack \
	tcpdump tshark wireshark-common docker.io busybox-static iperf3 tmux python3-venv python3-pip \
	nftables
APT_STAMP := .stamp-apt
VENV_STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit demo fixtures bench clean

install: $(APT_STAMP) $(VENV_STAMP)

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
$(VENV_STAMP): pyproject.toml $(APT_STAMP)
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

lint: install
	$(VENV)/bin/ruff check tracer probes tui tests bench

typecheck: install
	$(VENV)/bin/mypy tracer tui

test: install lint typecheck
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: install
	$(VENV)/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/hoptrace lab demo

fixtures: install
	$(VENV)/bin/python -m tracer.lab.fixtures

bench: install
	$(VENV)/bin/python bench/run_all.py

clean:
	rm -rf $(VENV) $(APT_STAMP) .mypy_cache .ruff_cache .pytest_cache
