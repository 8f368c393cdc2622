# Atlant. One cargo profile (release) for tests, daemons and benchmarks.
CARGO ?= cargo
PROFILE := --release
BIN := target/release
DEMO_DIR ?= demo
SUITE := scripts/suite.sh

.PHONY: all build build-all deps demo demo-down test test-long test-unit check fmt clippy bench bench-store bench-cluster clean sim-mon sim sim-long

all: build

build:
	$(CARGO) build $(PROFILE) --workspace --bins

# Bins, tests, examples and benches in one build, as the test suites run them.
build-all:
	$(CARGO) build $(PROFILE) --workspace --all-targets

deps:
	@scripts/install-deps.sh

# Starts a local 3-monitor, 3-OSD cluster under ./demo with image rbd/vm1 served over NBD.
demo: build
	@$(BIN)/atlant dev up --dir $(DEMO_DIR)
	@. $(DEMO_DIR)/cluster.env && $(BIN)/atlant status
	@scripts/demo-usage.sh $(DEMO_DIR)

demo-down:
	$(BIN)/atlant dev down --dir $(DEMO_DIR)

# Everything CI runs. Installs the Debian packages it needs when they are missing. One
# build serves every suite: `build-all` compiles bins and tests together (so dev-dependency
# features are unified once), and every suite runs on the whole workspace and picks its tests
# with a filter; `-p PACKAGE` would resolve features anew and rebuild half the tree.
NEXTEST := $(CARGO) nextest run $(PROFILE) --workspace --no-fail-fast
# A failing suite does not stop the later ones (`-`): the summary names every failure, and
# the run fails at the end. Only a failed build stops it, as nothing could run.
test: deps
	@rm -f target/suites.log
	-@$(SUITE) fmt $(CARGO) fmt --all -- --check
	@$(SUITE) build $(CARGO) build $(PROFILE) --workspace --all-targets
	-@$(SUITE) clippy $(CARGO) clippy $(PROFILE) --workspace --all-targets -- -D warnings
	-@$(SUITE) unit $(NEXTEST) -E 'not (binary(store_model) | binary(sim) | package(atlant-tests))'
	-@MON_SIM_SEEDS=200 $(SUITE) mon-sim $(NEXTEST) --no-capture -E 'package(atlant-mon) & binary(sim)'
	-@SIM_SEEDS=200 $(SUITE) cluster-sim $(NEXTEST) --no-capture --test-threads 1 -E 'package(atlant-sim) & binary(sim)'
	-@$(SUITE) store-crash-points $(NEXTEST) --no-capture -E 'package(atlant-osd) & binary(store_model)'
	-@$(SUITE) daemons $(NEXTEST) -E 'package(atlant-tests)'
	-@$(SUITE) skeleton tests/skeleton.sh
	@echo "==> suites:"; cat target/suites.log
	@awk '$$2 == "PASS" { p++ } $$2 != "PASS" { f++ } END { printf "suites: %d passed, %d failed\n", p, f } $$2 != "PASS" { bad = 1 } END { exit bad }' target/suites.log

# The randomised suites for much longer: 20000 crash points per durability mode, 200000
# fuzz cases per decoder, 1000 cases per property, 5000 seeds of the monitor simulation.
test-long: build-all
	STORE_CRASHES=20000 FUZZ_CASES=200000 PROPTEST_CASES=1000 MON_SIM_SEEDS=5000 PEERING_MODEL_SEEDS=200000 SIM_SEEDS=2000 $(CARGO) nextest run $(PROFILE) --workspace --no-fail-fast

# The whole-cluster simulation: one seed (make sim SEED=n [BUG=no-rollback]; writes the
# daemons' log to target/sim/seed-n.log), or thousands of seeds (make sim-long [SEEDS=5000]).
SEEDS ?= 5000
sim:
	$(CARGO) build $(PROFILE) -p atlant-sim
	SIM_KEEP_LOG=1 SIM_LOG=$${SIM_LOG:-info,sim=debug,osd=debug} $(BIN)/atlant-sim --seed $(SEED) $(if $(BUG),--bug $(BUG))

sim-long:
	$(CARGO) build $(PROFILE) -p atlant-sim
	$(BIN)/atlant-sim --seeds 1..$$(( $(SEEDS) + 1 ))

# Replays one seed of the monitor-group simulation: make sim-mon SEED=n
sim-mon:
	MON_SIM_SEED=$(SEED) $(CARGO) nextest run $(PROFILE) --workspace --no-capture -E 'package(atlant-mon) & binary(sim) & test(monitor_group)'

test-unit: build-all
	$(CARGO) nextest run $(PROFILE) --workspace

check: fmt clippy test-unit

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy $(PROFILE) --workspace --all-targets -- -D warnings

bench: deps build bench-store bench-cluster

# The object store alone beside fio on a file and a loop device (bench/store.sh).
bench-store:
	$(CARGO) build $(PROFILE) -p atlant-osd --examples
	bench/store.sh

bench-cluster:
	bench/cluster.sh

clean:
	$(CARGO) clean
