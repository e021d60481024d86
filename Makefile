# The two everyday commands; both set up .venv (and clang) first. See dev.sh.
.PHONY: demo test bench
demo:
	./dev.sh demo
test:
	./dev.sh test
bench:
	.venv/bin/python benchmarks/bench.py
