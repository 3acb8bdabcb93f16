# The two commands of the README. Both set up .venv by themselves and reuse it the second time.
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny-cpu
# The CPU build of torch must be installed before anything that depends on torch, or pip pulls the CUDA one.
TORCH   ?= torch==2.13.0

.PHONY: reproduce experiments test setup lab clean-notebooks

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

reproduce: setup
	$(PY) -m fcdpo.pipeline --profile $(PROFILE)

# Every training arm (DPO, SFT, step DPO, on-policy DPO, GRPO), three seeds each, on the tiny lab:
# configs/tiny-cpu-arms.yaml, results in runs/tiny-cpu-arms/. About 1 h 47 min on 2 cores from nothing;
# a stopped run resumes at the first arm not trained.
experiments: setup
	$(PY) -m fcdpo.pipeline --profile $(PROFILE)-arms

# Rebuild the shipped tiny lab (lab/<profile>/): tokenizer, teacher and student from the profile's seed,
# measured on the dev split. About an hour on 2 cores; an interrupted build resumes where it stopped.
lab: setup
	$(PY) -m fcdpo.tinylab --profile $(PROFILE)

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q

clean-notebooks:
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb
