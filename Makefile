# The two commands of the README. Each sets up what is missing first (scripts/bootstrap.sh).
.PHONY: quickstart test test-slow setup

OUT ?= quickstart_out

setup:
	@./scripts/bootstrap.sh

quickstart: setup
	.venv/bin/mdiff quickstart --out $(OUT)

test: setup
	.venv/bin/python -m pytest -q

test-slow: setup
	.venv/bin/python -m pytest -q -m slow
