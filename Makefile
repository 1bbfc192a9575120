# Two commands from a fresh clone (each sets itself up):
#   make demo   - make the synthetic demo data, train U-HVED on it (CPU), segment the held-out
#                 cases with all four modalities and with each single modality, print Dice
#   make test   - the linter (ruff, ruff.toml) and the test suite (what CI runs: .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test install clean-demo docs

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

demo: $(STAMP)
	$(BIN)/uhved_tf demo-data demo_data
	$(BIN)/uhved_tf train -c config/demo.ini --resume
	$(BIN)/uhved_tf inference -c config/demo.ini --modalities T1c,Flair --overwrite
	$(BIN)/uhved_tf evaluate -c config/demo.ini --subsets "full;singles"

# Two pytest workers (the CI box has 2 cores); a file's tests stay on one worker (module fixtures);
# files start longest first (tests/conftest.py: LONGEST_FILES), not reordered by test count.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -x -q -n 2 --dist loadfile --no-loadscope-reorder

docs: $(STAMP)
	$(BIN)/python -c "from uhved_tf.config import key_reference_markdown as k; print(k())" > docs/configuration.md

clean-demo:
	rm -rf demo_data demo_run
