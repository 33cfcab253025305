# DeepSeek-V3 pretraining in C/CUDA.
#   make            build/train, build/tokenize (and the CUDA backend when nvcc is found)
#   make deps       install missing Debian packages with apt-get (or print the command to run)
#   make test       everything that needs no GPU; ends with "N passed, N failed"
#   make run        train configs/tiny.yaml on the embedded corpus
#   make test-gpu   CUDA op and step tests (on a GPU machine); make bench-ops-gpu: GEMM/attention TFLOP/s
#   make bench      single-GPU benchmark (configs/bench-1gpu.yaml) and the data loader benchmark
#   make DEBUG=1    -O0 -g with address and undefined-behaviour sanitizers (build dir build-debug/)

SHELL := /bin/bash
CC    := mpicc
NVCC  ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)

DEBIAN_PKGS := libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libyaml-dev libpcre2-dev pkg-config

ifeq ($(DEBUG),1)
  BUILD  := build-debug
  OPT    := -O0 -g -fsanitize=address,undefined -fno-omit-frame-pointer
  LDOPT  := -fsanitize=address,undefined
else
  BUILD  := build
  OPT    := -O2 -g -march=x86-64-v2
  LDOPT  :=
endif

# HDF5: Debian ships it under pkg-config "hdf5" (serial); elsewhere h5cc -show gives the flags.
H5_CFLAGS := $(shell pkg-config --cflags hdf5 2>/dev/null || (h5cc -show 2>/dev/null | tr ' ' '\n' | grep '^-I' | tr '\n' ' '))
H5_LIBS   := $(shell pkg-config --libs hdf5 2>/dev/null || (h5cc -show 2>/dev/null | tr ' ' '\n' | grep -E '^-L|^-lhdf5$$' | tr '\n' ' '; echo -lhdf5))
YAML_LIBS := $(shell pkg-config --libs yaml-0.1 2>/dev/null || echo -lyaml)
PCRE_CFLAGS := $(shell pkg-config --cflags libpcre2-8 2>/dev/null)
PCRE_LIBS := $(shell pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)

CFLAGS  := -std=c11 -D_GNU_SOURCE $(OPT) -Wall -Wextra -Wno-unused-parameter -fopenmp -I. $(H5_CFLAGS) $(PCRE_CFLAGS)
LDLIBS  := $(H5_LIBS) $(YAML_LIBS) $(PCRE_LIBS) -lpthread -lm
LDFLAGS := -fopenmp $(LDOPT)

MAINS    := train/main.c data/tokenize_main.c data/bench_loader_main.c
LIB_SRC  := $(filter-out $(MAINS), $(wildcard train/*.c model/*.c kernels/*.c kernels/cpu/*.c parallel/*.c data/*.c))
TEST_SRC := $(wildcard tests/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)

# The CUDA backend: compiled and linked whenever nvcc exists (CI has nvcc but no GPU, so it cannot rot).
CU_SRC := $(wildcard kernels/cuda/*.cu)
ifneq ($(NVCC),)
ifneq ($(CU_SRC),)
  CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
  CU_OBJ    := $(CU_SRC:%.cu=$(BUILD)/obj/%.o)
  NVCCFLAGS := -O3 -std=c++20 -gencode=arch=compute_90a,code=sm_90a -I. -Xcompiler -Wall,-fPIC $(H5_CFLAGS)
  CFLAGS    += -DUSE_CUDA -I$(CUDA_HOME)/include
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lnccl -lstdc++
  # The GPU test and micro-benchmark programs (tests/gpu/); built with `make test` too, so they cannot rot in CI.
  GPU_BINS  := $(BUILD)/test_gpu $(BUILD)/bench_ops_gpu
endif
endif
GPU_TEST_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out tests/gpu/bench_%.c,$(wildcard tests/gpu/*.c))) \
                 $(patsubst %.cu,$(BUILD)/obj/%.o,$(wildcard tests/gpu/*.cu))
GPU_BENCH_OBJ := $(BUILD)/obj/tests/gpu/bench_ops_gpu.o

.PHONY: all deps test run test-gpu bench bench-cpu bench-cpu-attention bench-ops-gpu clean
all: $(BUILD)/train $(BUILD)/tokenize

$(BUILD)/obj/%.o: %.c $(wildcard */*.h */*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(wildcard */*.h */*/*.h kernels/cuda/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/train: $(BUILD)/obj/train/main.o $(LIB_OBJ) $(CU_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tokenize: $(BUILD)/obj/data/tokenize_main.o $(LIB_OBJ) $(CU_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench_loader: $(BUILD)/obj/data/bench_loader_main.o $(LIB_OBJ) $(CU_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests: $(TEST_OBJ) $(LIB_OBJ) $(CU_OBJ) | $(BUILD)/train $(BUILD)/tokenize $(GPU_BINS)
	$(CC) $(LDFLAGS) $(TEST_OBJ) $(LIB_OBJ) $(CU_OBJ) -o $@ $(LDLIBS)

# GPU tests: every cuda op against the cpu op (tests/gpu/test_*.c, run by the shared runner tests/main.c).
$(BUILD)/test_gpu: $(GPU_TEST_OBJ) $(BUILD)/obj/tests/main.o $(LIB_OBJ) $(CU_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench_ops_gpu: $(GPU_BENCH_OBJ) $(LIB_OBJ) $(CU_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# cpu backend matmul benchmark: prints GFLOP/s per shape (OMP_NUM_THREADS defaults to 2).
bench-cpu: $(BUILD)/bench_cpu_matmul
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} ./$(BUILD)/bench_cpu_matmul

$(BUILD)/bench_cpu_matmul: $(BUILD)/obj/kernels/cpu/bench/bench_cpu_matmul.o $(LIB_OBJ) $(CU_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# cpu backend attention benchmark: ms and GFLOP/s, forward and backward, tiny.yaml's shape and a larger one.
bench-cpu-attention: $(BUILD)/bench_cpu_attention
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} ./$(BUILD)/bench_cpu_attention

$(BUILD)/bench_cpu_attention: $(BUILD)/obj/kernels/cpu/bench/bench_cpu_attention.o $(LIB_OBJ) $(CU_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# Installs what is missing; a no-op when everything is there.
deps:
	@missing=""; \
	for p in $(DEBIAN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "deps: all present"; exit 0; fi; \
	if command -v mpicc >/dev/null && pkg-config --exists yaml-0.1 libpcre2-8 && { pkg-config --exists hdf5 || command -v h5cc >/dev/null; }; then \
	    echo "deps: libraries present (not as Debian packages:$$missing)"; exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	else \
	    echo "deps: missing$$missing; run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	fi

test: deps
	$(MAKE) --no-print-directory $(BUILD)/tests
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ./$(BUILD)/tests $(T)

# On a GPU machine: the cuda ops against the cpu ops (T=substr picks tests), then the op micro-benchmark.
test-gpu: deps
ifeq ($(CU_OBJ),)
	@echo "test-gpu: no nvcc found, so this build has no CUDA backend"; exit 1
else
	$(MAKE) --no-print-directory $(BUILD)/test_gpu $(BUILD)/bench_ops_gpu
	./$(BUILD)/test_gpu $(T)
endif

# GEMM and attention TFLOP/s at the bench-1gpu shapes (a benchmark: prints figures, asserts nothing).
bench-ops-gpu: deps
ifeq ($(CU_OBJ),)
	@echo "bench-ops-gpu: no nvcc found, so this build has no CUDA backend"; exit 1
else
	$(MAKE) --no-print-directory $(BUILD)/bench_ops_gpu
	./$(BUILD)/bench_ops_gpu
endif

# The benchmarks: the data loader and, with a GPU, the op micro-benchmark, then configs/bench-1gpu.yaml in BF16
# (MTP 1 and 0: tokens/s, TFLOP/s, MFU, memory) beside the PyTorch peer on the same GPU, with the ratio
# (tests/bench/bench_1gpu.sh).
bench: deps
	$(MAKE) --no-print-directory all $(BUILD)/bench_loader
	./$(BUILD)/bench_loader
	@if [ -n "$(CU_OBJ)" ] && nvidia-smi >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory bench-ops-gpu && bash tests/bench/bench_1gpu.sh $(BUILD); \
	else echo "bench: no GPU here: skipping the cuda benchmarks"; fi

# Trains the tiny model (resuming if runs/tiny has a checkpoint), then samples from it.
run: deps
	$(MAKE) --no-print-directory all
	./$(BUILD)/train configs/tiny.yaml
	./$(BUILD)/train sample runs/tiny --prompt "HACKER, n. " --tokens 300 --temperature 0.8 --top-p 0.95 --seed 1

clean:
	rm -rf build build-debug
