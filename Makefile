# Two commands on a fresh machine:  make demo   (install + run the default workflow)   make test   (the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PROFILE ?= workflow/profiles/default
SNAKEMAKE_ARGS ?=

.PHONY: demo install test test-fast lint format workflow dryrun-paper paper-report mlflow-ui dag report-html clean-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_PINS)
	$(BIN)/pip install -e '.[workflow,dev]' $(TORCH_PINS)
	touch $@

install: $(VENV)/.installed

demo: install workflow report-html
	@echo "Done: results/report/summary.md, results/report.html; browse runs with 'make mlflow-ui'."

workflow: install
	$(BIN)/snakemake --profile $(PROFILE) $(SNAKEMAKE_ARGS)

test: install
	$(BIN)/pytest -q -rs

test-fast: install
	$(BIN)/pytest -q -rs -m "not slow"

lint: install
	$(BIN)/ruff check sdn tests
	$(BIN)/ruff format --check sdn tests
	$(BIN)/snakemake --lint

format: install
	$(BIN)/ruff format sdn tests

dryrun-paper: install
	$(BIN)/snakemake -n --quiet rules --configfile config/paper.yaml

# Every analysis, table, figure and the report (with paper vs ours) from the published runs in $(PUBLISHED), on a
# CPU, without training (config/reproduction.yaml): results-paper/report/summary.md and results-paper/report.html.
PUBLISHED ?= reproduction
paper-report: install
	@$(BIN)/python -m sdn.reproduce.published $(PUBLISHED)
	$(BIN)/snakemake --profile $(PROFILE) --configfile config/reproduction.yaml --config published=$(PUBLISHED) \
		--report results-paper/report.html --report-after-run $(SNAKEMAKE_ARGS)
	@echo "Done: results-paper/report/summary.md (paper vs ours at its end), results-paper/report.html"

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000

dag: install
	mkdir -p results
	@if command -v dot >/dev/null; then \
		$(BIN)/snakemake --rulegraph | dot -Tpdf > results/rulegraph.pdf && echo "results/rulegraph.pdf"; \
	else \
		$(BIN)/snakemake --rulegraph > results/rulegraph.dot && echo "graphviz missing: wrote results/rulegraph.dot"; \
	fi

report-html: install
	$(BIN)/snakemake --report results/report.html $(SNAKEMAKE_ARGS)

clean-results:
	rm -rf results logs .snakemake
