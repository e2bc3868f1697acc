# The README's two commands: `make demo` and `make test`. Both set up everything first (idempotent, seconds when done).
PY := .venv/bin/python

.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh

# Setup runs inside the demo target (not as a prerequisite) so the demo can report how long it took.
demo:
	@t0=$$(date +%s); bash scripts/setup.sh && \
	WANMOE_SETUP_SECONDS=$$(( $$(date +%s) - t0 )) $(PY) scripts/demo.py

test: setup
	bash scripts/run_tests.sh

bench: setup
	$(PY) -m bench
