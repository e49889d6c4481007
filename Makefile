# Everything installs itself on a fresh machine: `make run` and `make test` are all a user needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps run test unit lint bench soak fuzz examples sim-days eco-week capacity-month lifecycle screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,plot]'
	touch $(STAMP)

setup: $(STAMP)

# mosquitto is the real broker the tests run against (the device embeds amqtt for users); chromium
# (headless, driven over its DevTools protocol) is the browser of the web page's test and screenshots.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }

run: setup
	$(BIN)/apm run --demo

# The unit tests, then the integration tests (processes, mosquitto, ptys, sockets): tests/unit, tests/integration.
test: setup system-deps lint
	$(BIN)/python -m pytest -q

# Only the fast tests of pure code (no subprocess, broker, pty or network): seconds.
unit: setup
	$(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.run

soak: setup system-deps
	$(BIN)/python -m pytest -q -m soak

fuzz: setup
	$(BIN)/python -m pytest -q -m fuzz

examples: setup
	$(BIN)/python -m sim.examples

# The closed loop, a winter day in seconds per scenario (reports and plots in out/).
sim-days: setup
	mkdir -p out
	for s in winter-it-40a winter-it-40a-kaifa winter-tn-25a; do \
	  $(BIN)/apm sim run sim/scenarios/$$s.toml --fast --report out/$$s.json --plot out/$$s.png || exit 1; done

eco-week: setup
	mkdir -p out
	$(BIN)/python -m sim.eco_loop sim/scenarios/eco-week-tn.toml --report out/eco-week.json

# January with the capacity-charge guard at 5 kW against none (about 10 minutes; report in out/).
capacity-month: setup
	mkdir -p out
	$(BIN)/python -m sim.capacity_loop sim/scenarios/capacity-month-tn.toml --step-kw 5 --report out/capacity-month.json

lifecycle: setup
	mkdir -p out
	$(BIN)/python -m sim.subscription_loop --report out/lifecycle.json

# The web page at phone and desktop width (docs/web-phone.png, docs/web-desktop.png), from the demo.
screenshots: setup system-deps
	$(BIN)/python -m tools.web_screenshots

clean:
	rm -rf $(VENV) .bench .pytest_cache .hypothesis
