# One command for the static checks: `make check` (ruff lint + format check + mypy strict + the
# import layering of pyproject.toml's [tool.importlinter]).
PY := .venv/bin
SRC := schemas common figures edge_agent ingest devtools simulators tests bench

.PHONY: check lint typecheck layers format test demo
check: lint typecheck layers

lint:
	$(PY)/ruff check $(SRC)
	$(PY)/ruff format --check $(SRC)

typecheck:
	$(PY)/mypy

layers:
	$(PY)/lint-imports

format:
	$(PY)/ruff format $(SRC)
	$(PY)/ruff check --fix $(SRC)

test:
	$(PY)/python -m pytest

demo:
	$(PY)/telematics demo
