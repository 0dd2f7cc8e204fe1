# The README's two commands:
#   make demo   set up, then run the main job (a spoken question to the embedded default model)
#   make test   set up, then run the linter and the tests
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: setup setup-test test lint demo clean

$(VENV)/.runtime: setup.cfg constraints-cpu.txt scripts/setup.sh
	scripts/setup.sh $(VENV) runtime
	touch $@

$(VENV)/.test: setup.cfg constraints-cpu.txt scripts/setup.sh
	scripts/setup.sh $(VENV) test
	touch $@ $(VENV)/.runtime

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

lint: setup-test
	$(BIN)/ruff check sgpt tests bench scripts examples

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/demo.sh $(OUT)

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
