# libcr-rs: build, install and test. See README.md.
PREFIX ?= $(HOME)/.local
CARGO ?= cargo
LIBVER := 0.5.5
REL := target/release

.PHONY: all build install check check-all lint clean bench bench-smoke check-cluster soak

all: build

build:
	$(CARGO) build --release

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 man/cr_run.1 man/cr_checkpoint.1 man/cr_restart.1 man/cr_info.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 755 $(REL)/cr_run $(REL)/cr_checkpoint $(REL)/cr_restart $(REL)/cr_info $(DESTDIR)$(PREFIX)/bin/
	install -m 755 $(REL)/libcr.so $(DESTDIR)$(PREFIX)/lib/libcr.so.$(LIBVER)
	ln -sf libcr.so.$(LIBVER) $(DESTDIR)$(PREFIX)/lib/libcr.so.0
	ln -sf libcr.so.0 $(DESTDIR)$(PREFIX)/lib/libcr.so
	for stub in run omit; do \
	  install -m 755 $(REL)/libcr_$$stub.so $(DESTDIR)$(PREFIX)/lib/libcr_$$stub.so.$(LIBVER); \
	  ln -sf libcr_$$stub.so.$(LIBVER) $(DESTDIR)$(PREFIX)/lib/libcr_$$stub.so.0; \
	  ln -sf libcr_$$stub.so.0 $(DESTDIR)$(PREFIX)/lib/libcr_$$stub.so; \
	done
	install -m 644 $(REL)/libcr.a $(DESTDIR)$(PREFIX)/lib/libcr.a
	install -m 644 include/libcr.h include/blcr_common.h include/blcr_errcodes.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(LIBVER)|g' libcr.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/libcr.pc
	@echo "installed into $(PREFIX)"

# Every test, as CI runs them (.ci/run): `check`, then the batch schedulers for real
# (`check-cluster`, needs root), then the benchmark at its smoke size.
check-all: check check-cluster bench-smoke

# Formatting, lints, unit tests and the end-to-end suites driving the real tools (under 25
# minutes on 2 cores).
check: lint
	$(CARGO) build --release
	$(CARGO) test --release

# The batch schedulers for real: starts Grid Engine's and Slurm's daemons on this host and runs
# jobs through contrib/sge and contrib/slurm (tests/cluster.rs, tests/cluster/*.sh). Needs root
# and the packages .ci/run installs (gridengine-master gridengine-exec gridengine-client
# slurm-wlm munge); about 3 minutes. CI runs it after `make check`.
check-cluster: build
	CR_CLUSTER_TESTS=1 $(CARGO) test --release --test cluster -- --test-threads=1 --nocapture

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# The benchmark (bench/bench.py, issue 11): raw I/O baseline, checkpoint/restart of six
# workloads, idle costs; writes docs/PERFORMANCE.md. BENCH_NICE=10 on a shared machine,
# BENCH_ARGS="--reps 5 --dir /scratch" etc. (python3 bench/bench.py --help).
BENCH_NICE ?= 0
bench: build
	BENCH_NICE=$(BENCH_NICE) nice -n $(BENCH_NICE) python3 bench/bench.py $(BENCH_ARGS)

# A small size of it (64 MiB, one repetition) for CI: target/bench/PERFORMANCE-smoke.md.
bench-smoke: build
	python3 bench/bench.py --smoke $(BENCH_ARGS)

# The long runs of the load, fault and fuzz suites (docs/RELIABILITY.md, "Soak"): 1000
# checkpoints in a row (time per checkpoint, first vs last 100, and the footprint compared), the
# load suite, the image fuzzer with 200,000 mutations per kind, the fault suite 5 times, and
# 2000 checkpoints of children that exec after up to 1 ms (the exec gate). About an hour on 2
# shared cores; not part of check-all.
SOAK_CHECKPOINTS ?= 1000
SOAK_FUZZ ?= 200000
SOAK_EXEC_CHECKPOINTS ?= 2000
soak: build
	LOAD_CHECKPOINTS=$(SOAK_CHECKPOINTS) LOAD_STORM_CHECKPOINTS=40 $(CARGO) test --release --test load -- --include-ignored --nocapture
	FAULT_EXEC_CHECKPOINTS=$(SOAK_EXEC_CHECKPOINTS) $(CARGO) test --release --test faults checkpoint_during_slow_fork_exec_churn -- --nocapture
	FUZZ_ITERS=$(SOAK_FUZZ) $(CARGO) test --release --test image_fuzz -- --nocapture
	for i in 1 2 3 4 5; do $(CARGO) test --release --test faults --test security || exit 1; done

clean:
	$(CARGO) clean
