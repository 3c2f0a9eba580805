# Two commands do everything on a fresh machine:
#   make demo   set up, then label the bundled toy scenes with the toy model and render a report
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel first: an unpinned torch would pull the newest CUDA build (gigabytes).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo corpus-demo test bench-download bench-memory bench-model bench-pipeline bench-video bench-toy clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	rm -rf out/demo-labels
	$(PY) -m jobs.label --input examples/demo.csv --allow-local-files --output out/demo-labels \
		--model examples/toy-cogvlm --task grounded_caption --previews-per-shard 16
	$(PY) -m jobs.report --labels out/demo-labels --out out/demo-report

corpus-demo: setup
	$(PY) -m jobs.build_corpus --input examples/urls.csv --output out/demo-corpus --allow-local-files

test: setup
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -q

bench-download: setup
	$(PY) benchmarks/download.py

bench-memory: setup
	$(PY) benchmarks/memory.py

bench-model: setup
	$(PY) benchmarks/model.py

bench-pipeline: setup
	$(PY) benchmarks/pipeline.py

bench-video: setup
	$(PY) benchmarks/video.py

bench-toy: setup
	$(PY) benchmarks/toy_quality.py

clean:
	rm -rf out
