# The two commands of the README: `make sim` and `make test`. Both build .venv themselves.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | md5sum | cut -c1-8)
# Debian packages the tests and tools need (installed only when missing).
APT_PACKAGES := mosquitto

.PHONY: test sim bench torture romfs deps clean mpy

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: the MicroPython unix wheel needs CPython 3.11"; exit 1; }
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; fi
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*; touch $@

# Node packages (tools only: the 32-bit MicroPython WebAssembly port for tools/memreport.py --wasm32).
NODE_STAMP := node_modules/.installed-$(shell cat package-lock.json | md5sum | cut -c1-8)

$(NODE_STAMP): package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 18+ (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --silent --no-audit --no-fund
	rm -f node_modules/.installed-*; touch $@

deps: $(STAMP) $(NODE_STAMP)

test: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests

sim: $(STAMP)
	$(VENV)/bin/python tools/demo.py

bench: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/python tools/bench.py

torture: $(STAMP)
	$(VENV)/bin/python tools/torture.py

# The firmware for an ESP32 as a ROMFS image (build/esp32.romfs), for `mpremote romfs deploy build/esp32.romfs`.
romfs: $(STAMP)
	$(VENV)/bin/python tools/build.py --out build/esp32 --march xtensawin --romfs

clean:
	rm -rf $(VENV) build .pytest_cache node_modules
