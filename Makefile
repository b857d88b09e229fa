# The two commands of the README: `make sim` and `make test`. Both build .venv themselves.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | md5sum | cut -c1-8)
# Debian packages the tests and tools need, as command:package pairs (socat: the pseudo-terminal that lets the
# deploy tests' MicroPython unix port play a board on a serial port; chromium and its driver: the web page's
# browser tests, run headless through selenium): the package is installed only when the command is missing (a Node.js from another source already brings npm, and Debian's npm would clash with it).
APT_COMMANDS := node:nodejs npm:npm mosquitto:mosquitto socat:socat chromium:chromium chromedriver:chromium-driver
# Parallel test workers: the tests mostly wait on simulated boards and Central Systems, not on the CPU. With 10 a
# 2-core machine sat idle for a third of the run's first minute, while the long tests waited; 14 keep it busy.
TEST_WORKERS ?= 14

.PHONY: test sim bench torture romfs deps clean mpy deploy

.PHONY: apt
apt:
	@missing=""; for pair in $(APT_COMMANDS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; fi

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: the MicroPython unix wheel needs CPython 3.11"; exit 1; }
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*; touch $@

# Node packages (tools only: the 32-bit MicroPython WebAssembly port for tools/memreport.py --wasm32).
NODE_STAMP := node_modules/.installed-$(shell cat package-lock.json | md5sum | cut -c1-8)

$(NODE_STAMP): package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 18+ (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --silent --no-audit --no-fund
	rm -f node_modules/.installed-*; touch $@

deps: apt $(STAMP) $(NODE_STAMP)

# Bytecode is written for the tests even where PYTHONDONTWRITEBYTECODE is set: pytest keeps each test module's
# assertion-rewritten code in __pycache__, and a collection run fills it first, so that the parallel workers load
# it instead of each rewriting all of them (3 s of CPU per worker, a sixth of a 2-core run).
PYTEST := PYTHONDONTWRITEBYTECODE= $(VENV)/bin/python -m pytest -q -p no:cacheprovider
test: apt $(STAMP) $(NODE_STAMP)
	$(PYTEST) --collect-only tests >/dev/null
	$(PYTEST) -n $(TEST_WORKERS) --maxschedchunk 1 tests

sim: apt $(STAMP)
	$(VENV)/bin/python tools/demo.py

bench: apt $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/python tools/bench.py

torture: apt $(STAMP)
	$(VENV)/bin/python tools/torture.py

# The firmware for an ESP32 as a ROMFS image (build/esp32.romfs), for `mpremote romfs deploy build/esp32.romfs`.
romfs: $(STAMP)
	$(VENV)/bin/python tools/build.py --out build/esp32 --march xtensawin --romfs

# Installs the firmware on a board over its serial port and watches it reach the Central System (tools/deploy.py):
#   make deploy PORT=/dev/ttyUSB0 CONFIG=charger.json [KEY=keys/ota-vendor-key.pem]
deploy: $(STAMP)
	@[ -n "$(PORT)" ] && [ -n "$(CONFIG)" ] || { echo "usage: make deploy PORT=/dev/ttyUSB0 CONFIG=charger.json [KEY=keys/ota-vendor-key.pem]"; exit 2; }
	$(VENV)/bin/python tools/deploy.py --port $(PORT) --config $(CONFIG) $(if $(KEY),--vendor-key $(KEY))

clean:
	rm -rf $(VENV) build .pytest_cache node_modules
