# Herald — the commands a newcomer and CI use. See README.md.
SHELL := /bin/bash
SERVICES := deploy/local/services.sh
CLUSTER := deploy/local/cluster.sh

export HERALD_AMQP_PORT ?= 5673
export HERALD_AMQP_MGMT_PORT ?= 15673
export HERALD_PG_PORT ?= 5433
# The three-node cluster of `make cluster`: AMQP 5681–5683, management 15681–15683.
export HERALD_CLUSTER_PORTS ?= 5681
export HERALD_CLUSTER_MGMT_PORTS ?= 15681
export HERALD__AMQP__URL ?= amqp://guest:guest@127.0.0.1:$(HERALD_AMQP_PORT)/%2f
export HERALD__DATABASE__URL ?= postgres://herald:herald@127.0.0.1:$(HERALD_PG_PORT)/herald
export HERALD_AMQP_MGMT_URL ?= http://guest:guest@127.0.0.1:$(HERALD_AMQP_MGMT_PORT)

# The most the build and test suite of `make test` may take: a hang fails CI loudly, well
# inside its 90 minutes (each end-to-end test is also bounded: tests/it/common).
TEST_TIME_LIMIT ?= 45m

HERALD := cargo run --quiet --bin herald --

.PHONY: run test services services-stop cluster cluster-stop cluster-test faults migrate lint openapi bench bench-scale-out bench-heap build clean-local check-deploy check-rerun

## Start local RabbitMQ + PostgreSQL, migrate, serve with the development config.
run: services
	$(HERALD) migrate --config deploy/local/herald.toml
	$(HERALD) serve --config deploy/local/herald.toml

## The local services, then the whole test suite, then `make run` started, stopped and
## started again on one database (deploy/local/check-rerun.sh), then the deploy artifacts
## (deploy/check.sh: promtool checks and unit-tests the alert rules, the Kubernetes
## manifests are rendered with kustomize and checked, shellcheck; installs what it needs).
test: services
	timeout --kill-after=30s $(TEST_TIME_LIMIT) cargo test --features bench --lib --bins --tests -- --test-threads=4
	deploy/local/check-rerun.sh
	deploy/check.sh

services:
	@$(SERVICES) start

services-stop:
	@$(SERVICES) stop

## A local three-node RabbitMQ cluster (deploy/local/cluster.sh): idempotent; prints the
## amqp.url list to give Herald. `make cluster-stop` stops every node.
cluster:
	@$(CLUSTER) start

cluster-stop:
	@$(CLUSTER) stop

## On real nodes, so not part of `make test` (about 3 minutes): deploy/local/cluster_test.sh
## (start twice, one node stopped and rejoined, a full stop and restart, stop twice, on a
## cluster of its own, ports 5691–5693), then the tests that need `make cluster`
## (tests/it/cluster.rs: quorum queues on every node; Herald delivering on while the node
## its consumers use is stopped; ordered keys kept in order while the node leading
## <prefix>.ordered is stopped mid-stream and started again), and the scale-out
## benchmark scenario on tiny numbers (tests/it/bench_scale_out.rs).
cluster-test: services cluster
	deploy/local/cluster_test.sh
	cargo test --features bench --test it -- --ignored --test-threads=1 cluster:: bench_scale_out::

## The full fault-injection suite (issue 17; tests/it/faults, docs/reliability.md):
## starts the cluster and the suite's own PostgreSQL (deploy/local/faults_pg.sh, port
## 5439: it is stopped and killed on purpose, so never the shared 5433), runs every fault
## at full scale one after the other, then renders target/faults/*-full.json into
## docs/reliability.md — also when a fault failed, whose section then says so. About 5
## minutes on 2 cores. `make test` runs the short version (tests/it/faults, not ignored).
FAULTS_TIME_LIMIT ?= 30m
faults: services cluster
	deploy/local/faults_pg.sh start
	rm -f $(BENCH_TARGET)/faults/*-full.json
	status=0; timeout --kill-after=30s $(FAULTS_TIME_LIMIT) cargo test --features bench --test it \
		-- --ignored --test-threads=1 --nocapture faults:: --skip faults::report || status=$$?; \
	cargo test --features bench --test it -- --ignored --exact \
		faults::report::render_the_full_suite_s_figures_into_reliability_md; \
	exit $$status

migrate: services
	$(HERALD) migrate

lint:
	cargo fmt --all -- --check
	cargo clippy --features bench --all-targets -- -D warnings

build:
	cargo build --features bench --all-targets

## Writes docs/openapi.json again from the code (src/api/v1/doc.rs and the handlers'
## #[utoipa::path]); a unit test and tests/it/openapi.rs fail while it is stale.
openapi:
	UPDATE_OPENAPI=1 cargo test --features bench --lib openapi

## Benchmarks (not part of `make test`): every scenario against the local services and a
## minimal relay; table to stdout and docs/benchmarks.md, figures to target/bench/results.json.
## BENCH_QUICK=1 runs every scenario small (a few minutes).
BENCH_TARGET := $(or $(CARGO_TARGET_DIR),target)
bench: services
	cargo build --release --features bench --bins
	$(BENCH_TARGET)/release/herald-bench --mode $(if $(BENCH_QUICK),quick,full) \
		--json $(BENCH_TARGET)/bench/results.json --docs docs/benchmarks.md

## Scale-out (issue 19; not part of `make bench`): one, then two Herald processes of each
## of the roles ingest and deliver on the three-node cluster of `make cluster`, runs
## alternated; throughput (one endpoint, as fast as possible) and latency at a fixed
## offered rate. Figures to target/bench/scale-out.json (docs/benchmarks.md, "Scale-out").
bench-scale-out: services cluster
	cargo build --release --features bench --bins
	$(BENCH_TARGET)/release/herald-bench --mode $(if $(BENCH_QUICK),quick,full) \
		--scenarios scale-out --json $(BENCH_TARGET)/bench/scale-out.json

## Heap profile of Herald in some scenarios (default: slow): Herald built with the
## system allocator and run under heaptrack; profiles in target/heap/, read with
## `heaptrack_print -f target/heap/herald.<pid>.zst`. Figures are not comparable with `make bench`.
BENCH_SCENARIOS ?= slow
bench-heap: services
	command -v heaptrack >/dev/null || apt-get install -y heaptrack zstd
	cargo build --release --no-default-features --bin herald
	mkdir -p $(BENCH_TARGET)/heap && cp $(BENCH_TARGET)/release/herald $(BENCH_TARGET)/heap/herald-system-alloc
	cargo build --release --features bench --bins
	HERALD_HEAP_BINARY=$(BENCH_TARGET)/heap/herald-system-alloc HERALD_HEAP_DIR=$(BENCH_TARGET)/heap \
		$(BENCH_TARGET)/release/herald-bench --mode $(if $(BENCH_QUICK),quick,full) \
		--scenarios $(BENCH_SCENARIOS) --reps 1 --herald deploy/profile/heaptrack-herald.sh \
		--json $(BENCH_TARGET)/heap/results.json

check-deploy:
	deploy/check.sh

## `make run` twice and `herald migrate` a third time on one fresh database (part of `make test`).
check-rerun: services
	deploy/local/check-rerun.sh

clean-local: services-stop cluster-stop
	rm -rf .local
