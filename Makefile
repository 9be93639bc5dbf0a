# The two commands of the README. Each sets up what is missing first (scripts/bootstrap.sh).
.PHONY: quickstart test test-slow setup

OUT ?= quickstart_out

setup:
	@./scripts/bootstrap.sh

quickstart: setup
	.venv/bin/mdiff quickstart --out $(OUT)

# glibc.malloc.hugetlb=1: huge-page malloc, as the mdiff command sets for itself (mdiff/runtime.py).
test: setup
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python -m pytest -q

test-slow: setup
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python -m pytest -q -m slow
