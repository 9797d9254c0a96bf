# tally: the developer entry points. CMake does the building; this file only names the jobs.
#   make run     install what is missing, build, run a local 3-node cluster (Ctrl-C stops it)
#   make demo    the ledger alone, in one process
#   make test    install what is missing, build (normal and ASan+UBSan), run every test
#   make bench   ledger throughput benchmark
#   make compare the 3-node cluster against PostgreSQL, Redis and etcd (compare-quick: ~2 min)
#   make fuzz    run the batch, wire-protocol, peer handshake and peer message fuzzers
#                (FUZZ_SECONDS each, default 60; installs clang if it is missing)
#   make sim SEEDS=N  the deterministic Raft simulation over more seeds
#   make model-long   the randomized model test with MODEL_STEPS (default 2,000,000)
#   make chaos-smoke  the 2-minute fault-injection run that `make test` includes (root)
#   make chaos DURATION=1800 [SEED=N]  a long fault-injection run (root; docs/chaos.md)

JOBS ?= $(shell nproc)
BUILD ?= build
ASAN_BUILD ?= build-asan
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: all setup build build-asan run demo test test-fast bench compare compare-quick fuzz model-long sim chaos-smoke chaos clean

all: build

setup:
	@$(SUDO) bash scripts/setup.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

$(ASAN_BUILD)/CMakeCache.txt:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTALLY_SANITIZE=ON

build: setup $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

build-asan: setup $(ASAN_BUILD)/CMakeCache.txt
	cmake --build $(ASAN_BUILD) -j$(JOBS)

# A local three-node cluster on loopback, data under ./data, until Ctrl-C.
run: build
	bash scripts/cluster.sh $(BUILD)

demo: build
	./$(BUILD)/ledger/tally-ledger-demo

# Every test in the normal build, then again under AddressSanitizer + UBSan.
test: build build-asan
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS)
	ctest --test-dir $(ASAN_BUILD) --output-on-failure -j$(JOBS)

test-fast: build
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS)

bench: build
	./$(BUILD)/bench/ledger-bench

# tally side by side with PostgreSQL, Redis and etcd (installs them; 6-8 minutes).
compare: build
	bash bench/compare --build $(BUILD)

compare-quick: build
	bash bench/compare --quick --build $(BUILD)

# The peer fuzzers compile libraft's patched sources, which configuring $(BUILD) extracts.
FUZZ_SECONDS ?= 60
fuzz: setup
	@command -v clang >/dev/null || $(SUDO) sh -c 'apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev'
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	LIBRAFT_SRC=$(BUILD)/third_party/libraft/src/raft-0.22.1 \
	    bash tests/fuzz/run.sh $(FUZZ_SECONDS)

MODEL_STEPS ?= 2000000
model-long: build
	TALLY_MODEL_STEPS=$(MODEL_STEPS) ./$(BUILD)/tests/ledger_model_test

SEEDS ?= 20000
FIRST ?= 1
sim: build
	./$(BUILD)/tests/sim/tally-sim --seeds $(SEEDS) --first $(FIRST)

chaos-smoke: build
	$(SUDO) bash chaos/run.sh --smoke --build $(BUILD) $(if $(SEED),--seed $(SEED))

DURATION ?= 1800
chaos: build
	$(SUDO) bash chaos/run.sh --duration $(DURATION) --build $(BUILD) --keep $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
