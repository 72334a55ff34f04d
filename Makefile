# reelvault developer entry points. Everything runs from .venv, created on first use from
# pyproject.toml and pinned by constraints.txt; nothing but Python 3.11+ is needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv run test test-postgres test-faults lint format protos check-protos bench-crypto bench bench-audit bench-origin bench-payloads lock clean validate-deploy

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

# The manifest checkers live in a venv of their own, pinned by deploy/constraints.txt:
# checkov pulls in about 100 packages that must not mix with the service's.
DEPLOY_VENV  := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed-stamp
# Kubernetes versions the manifests must validate against: the oldest we support, the newest
# kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS ?= 1.33.0 1.37.0
K8S_MANIFESTS := $(filter-out %/kustomization.yaml,$(wildcard deploy/kubernetes/*.yaml))

$(DEPLOY_STAMP): deploy/constraints.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check -c deploy/constraints.txt \
		kubernetes-validate checkov
	touch $(DEPLOY_STAMP)

## make validate-deploy: deploy/kubernetes against the Kubernetes schemas (strict) and checkov's security checks
validate-deploy: $(DEPLOY_STAMP)
	for version in $(KUBERNETES_VERSIONS); do \
		$(DEPLOY_VENV)/bin/kubernetes-validate --strict --quiet --kubernetes-version $$version \
			$(K8S_MANIFESTS) || exit 1; \
	done
	$(DEPLOY_VENV)/bin/checkov -d deploy/kubernetes --framework kubernetes --compact --quiet \
		--skip-download

## make bench-crypto: format throughput vs raw AES-GCM and the official SDK
bench-crypto: $(STAMP)
	$(PY) -m bench.crypto_bench --json bench/results/crypto.json

## make bench: the service end to end (1 GiB up/down, ranges, server RSS) vs boto3 on SeaweedFS
bench: $(STAMP)
	$(PY) -m bench.service_bench --json bench/results/service.json

## make bench-audit: what the audit log costs (StatAsset audited vs no-op, write rate, queries, verification)
bench-audit: $(STAMP)
	$(PY) -m bench.audit_bench --json bench/results/audit.json

## make bench-origin: the HTTP origin vs a bare relay and the store (1 GiB GET, 64 KiB ranges under wrk, tokens, RSS)
bench-origin: $(STAMP)
	$(PY) -m bench.origin_bench --json bench/results/origin.json

## make bench-payloads: PutPayload/GetPayload vs a trivial RPC, vs the official SDK, catalog vs SeaweedFS, rewrap of 100,000 keys
bench-payloads: $(STAMP)
	$(PY) -m bench.payload_bench --json bench/results/payloads.json

## make lock: re-resolve and pin every dependency (then review the diff)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable | sort > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
