# Every target sets itself up on a fresh machine: a venv in .venv with the project installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-slow docs demo bench bench-gpu clean

install: $(STAMP)

# torch/torchvision are pinned to the pair that installs from this machine's disk
# (a range admitting other releases would download gigabytes or break torchvision).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e '.[test,cluster,metrics,export,tracking,docs]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link, anchor
# or reference. `make test` builds it too (tests/test_docs.py). The two variables quiet banners
# the theme and a plugin print on every build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict -d site

demo: $(STAMP)
	@run=outputs/demo/$$(date +%Y-%m-%d_%H-%M-%S); \
	$(BIN)/aexp train hydra.run.dir=$$run && \
	$(BIN)/aexp render $$run && \
	echo "demo animation: $$run/latent.mp4"

# Side-by-side training benchmark (not part of `make test`); real MNIST with
# `make bench BENCH_ARGS="--root DIR"` where DIR holds MNIST/raw. Writes outputs/bench/.
# `make bench` runs every row shortened (--quick, about 15 minutes on 2 quiet cores);
# `make bench-full` the full lengths.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py --quick $(BENCH_ARGS)

bench-full: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The GPU figures (samples/s, epoch time, peak memory; fp32/bf16; compile off/on), on one CUDA
# device, in about 8 minutes; writes outputs/bench_gpu/. Refuses to run without a GPU.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py $(BENCH_ARGS)

clean:
	rm -rf outputs/demo multirun .pytest_cache site
