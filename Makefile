# reelvault developer entry points. Everything runs from .venv, created on first use from
# pyproject.toml and pinned by constraints.txt; nothing but Python 3.11+ is needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv run test test-postgres test-faults lint format protos check-protos bench-crypto bench bench-audit lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## make run: a local vault (SeaweedFS + the gRPC service on 127.0.0.1:7400) in .reelvault/
run: $(STAMP)
	$(VENV)/bin/reelvault dev

## make test: the whole suite (SQLite for the catalog tests)
test: $(STAMP)
	$(PY) -m pytest

## make test-postgres: the catalog tests again against PostgreSQL (REELVAULT_TEST_DATABASE_URL)
test-postgres: $(STAMP)
	REELVAULT_TEST_DATABASE_URL=$${REELVAULT_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} \
		$(PY) -m pytest -m db

## make test-faults: the fault suite (real SeaweedFS, a private PostgreSQL, killed and restarted)
test-faults: $(STAMP)
	$(PY) -m pytest -m faults tests/faults

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

PROTOC := $(PY) -m grpc_tools.protoc -Iprotos

## make protos: regenerate src/reelvault/v1 from protos/ (the generated code is committed)
protos: $(STAMP)
	rm -f src/reelvault/v1/*_pb2*.py src/reelvault/v1/*_pb2*.pyi
	$(PROTOC) --python_out=src --grpc_python_out=src --pyi_out=src protos/reelvault/v1/*.proto

## make check-protos: fail if the committed generated code is not what protos/ produces
check-protos: $(STAMP)
	rm -rf .protos-check && mkdir -p .protos-check
	$(PROTOC) --python_out=.protos-check --grpc_python_out=.protos-check --pyi_out=.protos-check \
		protos/reelvault/v1/*.proto
	diff -r -x __init__.py -x __pycache__ .protos-check/reelvault/v1 src/reelvault/v1 \
		|| (echo "generated code is stale: run 'make protos' and commit" >&2; rm -rf .protos-check; exit 1)
	rm -rf .protos-check

## make bench-crypto: format throughput vs raw AES-GCM and the official SDK
bench-crypto: $(STAMP)
	$(PY) -m bench.crypto_bench --json bench/results/crypto.json

## make bench: the service end to end (1 GiB up/down, ranges, server RSS) vs boto3 on SeaweedFS
bench: $(STAMP)
	$(PY) -m bench.service_bench --json bench/results/service.json

## make bench-audit: what the audit log costs (StatAsset audited vs no-op, write rate, queries, verification)
bench-audit: $(STAMP)
	$(PY) -m bench.audit_bench --json bench/results/audit.json

## make lock: re-resolve and pin every dependency (then review the diff)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable | sort > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
