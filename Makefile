# The README's two commands: `make demo` and `make test`. Both set up everything first.
PY := .venv/bin/python

.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) scripts/demo.py

test: setup
	bash scripts/run_tests.sh

bench: setup
	$(PY) -m bench
