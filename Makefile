# One command for the static checks: `make check` (ruff lint + format check + mypy strict).
PY := .venv/bin
SRC := schemas edge_agent ingest simulators tests bench

.PHONY: check lint typecheck format test demo
check: lint typecheck

lint:
	$(PY)/ruff check $(SRC)
	$(PY)/ruff format --check $(SRC)

typecheck:
	$(PY)/mypy

format:
	$(PY)/ruff format $(SRC)
	$(PY)/ruff check --fix $(SRC)

test:
	$(PY)/python -m pytest

demo:
	$(PY)/telematics demo
