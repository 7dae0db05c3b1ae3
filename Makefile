# Two commands on a fresh machine with Python 3.11+ and make:
#   make train   set up .venv and train the default ResNet on the embedded digits
#   make test    set up .venv and run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: train test docs

$(BIN)/resnets: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

train: $(BIN)/resnets
	$(BIN)/resnets train

test: $(BIN)/resnets
	$(BIN)/python -m pytest tests

# Regenerate the generated pages under docs/.
docs: $(BIN)/resnets
	$(BIN)/resnets summary > docs/MODELS.md.tmp && mv docs/MODELS.md.tmp docs/MODELS.md
