# Two commands: `make run` (set up + open the app) and `make test` (set up + all tests).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BUNDLE := .cache/vendor/plotly-cartesian-4.1.1.min.js.gz
PORT   ?= 8501
# `make run HOST=0.0.0.0` opens the app to the network (README: Running a shared server)
HOST   ?= 127.0.0.1
# `make run HOST=0.0.0.0 WORKSHOP=ml-101 BUDGET=20x INSTRUCTOR_KEY=...` runs a workshop (README: Running a workshop)
WORKSHOP_ENV = $(if $(WORKSHOP),PET_WORKSHOP_CODE='$(WORKSHOP)') $(if $(BUDGET),PET_WORKSHOP_BUDGET='$(BUDGET)') \
               $(if $(INSTRUCTOR_KEY),PET_WORKSHOP_INSTRUCTOR_KEY='$(INSTRUCTOR_KEY)')

.PHONY: setup setup-dev run test bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# plotly.js's cartesian bundle for workshop handouts, fetched from the npm registry and checked (not in git)
$(BUNDLE): pet_core/plotly_bundle.py $(VENV)/.installed
	$(PY) -m pet_core.plotly_bundle

$(VENV)/.installed-dev: $(VENV)/.installed $(BUNDLE) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed $(BUNDLE)

setup-dev: $(VENV)/.installed-dev

run: setup
	$(WORKSHOP_ENV) $(PY) -m studio.serve --server.port $(PORT) --server.address $(HOST)

test: setup-dev
	$(PY) -m pytest -q

bench: setup-dev
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache
