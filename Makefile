# The two commands of the README. Each sets up what is missing first (scripts/bootstrap.sh).
.PHONY: quickstart test test-slow setup

OUT ?= quickstart_out

setup:
	@./scripts/bootstrap.sh

quickstart: setup
	.venv/bin/mdiff quickstart --out $(OUT)

# glibc.malloc.hugetlb=1: huge-page malloc, as the mdiff command sets for itself (mdiff/runtime.py).
# Two pytest workers (pytest-xdist), each taking whole test files so module fixtures are built once: XLA
# compiles on one thread, so two workers fill two cores (18.2 -> 12.9 min for the default run on 2 cores).
PYTEST = GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python -m pytest -q -n 2 --dist loadfile

test: setup
	$(PYTEST)

test-slow: setup
	$(PYTEST) -m slow
