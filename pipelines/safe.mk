# pipelines/safe.mk — a SAFE training run as file targets, one directory per iteration.
#
#   make -f pipelines/safe.mk RUN=run/demo ITERS=20
#
#   RUN/init/control.safe            initial control state (safe-pid --init)
#   RUN/0007/rollout.K-of-N.safe     rollout shard K of N = SHARDS (safe-rollout --shard K/N)
#   RUN/0007/scored.K-of-N.safe      its rewards (safe-score)
#   RUN/0007/rollout.safe            the shards concatenated (for inspection and reruns)
#   RUN/0007/scored.safe             the scored shards concatenated
#   RUN/0007/adv.safe + critic/      values, advantages, next critic (safe-critic)
#   RUN/0007/stats.safe + policy/    next policy and the iteration's stats (safe-update)
#   RUN/0007/control.safe            next control state: tau, phase, PID (safe-pid)
#
# Every stage writes to a temporary name and renames, so after an interruption `make` redoes
# only the missing targets; each stage is a pure function of its inputs and the seed, so the
# resumed run is identical to an uninterrupted one. `make -j` runs the rollout/score shards
# in parallel. LAUNCH is put before each per-shard stage (e.g. `srun -N1 -n1`, `timeout 2h`;
# for other machines over ssh use HOSTS below: a bare `ssh host` runs in the remote home
# directory with the arguments unquoted),
# LAUNCH_DP before the critic and update, which then run data parallel (see DATA PARALLEL in
# safe-update(1)): `LAUNCH_DP="mpirun -np 2 --oversubscribe"` on one machine,
# `LAUNCH_DP="srun --mpi=pmix -n 8"` in a Slurm allocation, `LAUNCH_DP="mpirun -np 4 -H a:2,b:2"`
# over ssh. Their outputs are written by rank 0 only, so the targets below are unchanged.
# Examples: pipelines/slurm-example.sbatch, pipelines/ssh-example.sh.
#
# Hosts: HOSTS="a b c" runs shard K's rollout and score on host number K mod 3 (a, b, c, a,
# ...) through `$(HOST_LAUNCH) HOST CMD ARGS`; HOST_LAUNCH is pipelines/on-host (ssh to HOST
# and run CMD in the same directory there, arguments quoted; see its header), found beside
# this makefile wherever make is run from. The hosts need this directory at the same path and
# RUN on a filesystem shared with them; use SHARDS=3 (or a multiple) to give each host work.
# With HOSTS set, LAUNCH still goes first and runs here, around the ssh: LAUNCH="timeout 2h"
# gives up on a shard whose host hangs. To wrap the command on the remote side instead, give a
# HOST_LAUNCH of your own (called as HOST_LAUNCH HOST CMD ARGS). The concatenation, critic,
# update (LAUNCH_DP), pid and report stages run here in either case.
#
# Changing SHARDS on an existing RUN is safe: the shard files carry N in their names, so the
# slices of different splits never meet (and safe-cat refuses to join such slices, or one
# twice), and they are intermediate files to make, so the iterations already done are not
# redone for want of the new split's shards; the iterations still to come use the new split
# (the same records either way). Deleting a shard file therefore does not make its iteration
# run again: delete the iteration's rollout.safe (or the whole iteration directory) for that.
#
# Disk: each policy/ and critic/ holds its weights and its AdamW moments (twice the weights).
# KEEP_OPT=N deletes the moments of the checkpoints older than the last N iterations once an
# iteration ends (N >= 1: the next iteration, and a resumed one, still find the moments they
# start from); the weights always stay. For a 135M model that is ~3.2 GB -> ~1.1 GB per
# iteration. Rerunning the critic or update of a pruned iteration by hand then starts AdamW
# from zero moments (the tools warn), so its result differs from the original run's.

# This makefile's directory (before anything is included), for HOST_LAUNCH.
SAFE_MK_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

SAFE_BIN   ?= bin
DATA       ?= ../shared/data
MODEL      ?= $(DATA)/stories260K/stories260K.bin
REF        ?= $(MODEL)
PROMPTS    ?= $(DATA)/tinystories/prompts.jsonl
SCORER     ?= --vader
RUN        ?= run/safe
ITERS      ?= 10
BATCH      ?= 16
SAMPLES    ?= 4
SEED       ?= 1
ALGO       ?= safe
SHARDS     ?= 1
MAX_NEW    ?= 64
TEMP       ?= 1.0
LEVEL      ?= 3
LAUNCH     ?=
LAUNCH_DP  ?=
HOSTS      ?=
HOST_LAUNCH ?= $(SAFE_MK_DIR)/on-host
# DEVICE=cpu|cuda: where the model stages (rollout, critic, update) run; empty: each tool's
# default (cuda when built with CUDA and a GPU is visible, else cpu).
DEVICE     ?=
QUIET      ?= --quiet
ROLLOUT_OPTS ?=
SCORE_OPTS   ?=
CRITIC_OPTS  ?=
UPDATE_OPTS  ?=
PID_OPTS     ?=
REPORT_OPTS  ?=
KEEP_OPT     ?=

ifneq ($(KEEP_OPT),)
  ifeq ($(shell [ "$(KEEP_OPT)" -ge 1 ] 2>/dev/null && echo ok),)
    $(error KEEP_OPT must be a whole number >= 1 (iterations whose optimiser state is kept), got '$(KEEP_OPT)')
  endif
endif
# whole numbers from 1 to 100000 without leading zeros, checked before they reach seq and the
# shell's arithmetic (and file names: SHARDS is in the shards' names)
count_ok = $(shell case '$(1)' in ('' | *[!0-9]* | 0*) ;; (*) [ '$(1)' -le 100000 ] && echo ok ;; esac)
$(foreach v,ITERS SHARDS,$(if $(call count_ok,$($(v))),,$(error $(v) must be a whole number from 1 to 100000, got '$($(v))')))
# GNU make walks the chain of iterations recursively: about 1.5 KiB of its stack per
# iteration, so the default 8 MiB stops near 5,000 (make itself would crash further on)
ifneq ($(shell s=$$(ulimit -s); [ "$$s" != unlimited ] && [ "$$s" -lt $$(( $(ITERS) * 3 / 2 )) ] && echo $$s),)
  $(error ITERS=$(ITERS) needs more stack for make than 'ulimit -s' gives ($(shell ulimit -s) KiB): run 'ulimit -s unlimited' (or at least $(shell echo $$(( $(ITERS) * 3 / 2 )))) in this shell first)
endif
ITER_NAMES := $(shell seq -f %04g 0 $$(( $(ITERS) - 1 )))
SHARD_IDS  := $(shell seq 0 $$(( $(SHARDS) - 1 )))
LAST       := $(lastword $(ITER_NAMES))
B          := $(SAFE_BIN)
DEV        := $(if $(DEVICE),--device $(DEVICE))

# Previous iteration's name (empty for the first): PREV_0007 = 0006, set where the rules are
# made (no shell per rule, so that a run of many iterations still parses quickly).
prev = $(PREV_$(1))
# Iteration number without leading zeros (names have four digits, or more without zeros).
num = $(or $(patsubst 0%,%,$(patsubst 0%,%,$(patsubst 0%,%,$(1)))),0)
# Policy, critic and control state that iteration $(1) starts from, and their make targets.
policy_path  = $(if $(call prev,$(1)),$(RUN)/$(call prev,$(1))/policy,$(MODEL))
policy_dep   = $(if $(call prev,$(1)),$(RUN)/$(call prev,$(1))/stats.safe,$(MODEL))
critic_arg   = $(if $(call prev,$(1)),--critic $(RUN)/$(call prev,$(1))/critic,--init-from $(MODEL))
critic_dep   = $(if $(call prev,$(1)),$(RUN)/$(call prev,$(1))/adv.safe,$(MODEL))
control_path = $(if $(call prev,$(1)),$(RUN)/$(call prev,$(1))/control.safe,$(RUN)/init/control.safe)
# Iteration $(1)'s per-shard files of stage $(2) (rollout, scored), in shard order.
shard_files  = $(foreach k,$(SHARD_IDS),$(RUN)/$(1)/$(2).$(k)-of-$(SHARDS).safe)
# The prefix for shard $(1)'s stages: LAUNCH, then with HOSTS the launcher and host $(1) mod n
# (HOST_NUMS: one "shard:host number" word per shard, from one shell call).
HOST_NUMS   := $(if $(strip $(HOSTS)),$(shell n=$(words $(HOSTS)); for k in $(SHARD_IDS); do echo $$k:$$(( k % n + 1 )); done))
shard_host   = $(word $(patsubst $(1):%,%,$(filter $(1):%,$(HOST_NUMS))),$(HOSTS))
shard_launch = $(strip $(LAUNCH) $(if $(strip $(HOSTS)),$(HOST_LAUNCH) $(call shard_host,$(1))))

.PHONY: all report
.DELETE_ON_ERROR:
all: $(RUN)/$(LAST)/control.safe
	@$(B)/safe-report --summary $(REPORT_OPTS) $(RUN)

report:
	@$(B)/safe-report $(REPORT_OPTS) $(RUN)

$(RUN)/init/control.safe:
	@mkdir -p $(@D)
	@$(B)/safe-pid --init --algo $(ALGO) $(PID_OPTS) --level $(LEVEL) -o $@

# One shard of one iteration's rollout and its scores: $(1) iteration, $(2) shard index.
define shard_rules
$(RUN)/$(1)/rollout.$(2)-of-$(SHARDS).safe: $(call policy_dep,$(1))
	@mkdir -p $$(@D)
	@$(call shard_launch,$(2)) $(B)/safe-rollout --policy $(call policy_path,$(1)) --ref $(REF) --prompts $(PROMPTS) \
	  --num-prompts $(BATCH) --samples-per-prompt $(SAMPLES) --max-new-tokens $(MAX_NEW) \
	  --temperature $(TEMP) --seed $(SEED) --iteration $(call num,$(1)) --shard $(2)/$(SHARDS) \
	  --level $(LEVEL) $(QUIET) $(DEV) $(ROLLOUT_OPTS) -o $$@

$(RUN)/$(1)/scored.$(2)-of-$(SHARDS).safe: $(RUN)/$(1)/rollout.$(2)-of-$(SHARDS).safe
	@$(call shard_launch,$(2)) $(B)/safe-score $(SCORER) $(SCORE_OPTS) --level $(LEVEL) $(QUIET) -i $$< -o $$@
endef

# The stages of iteration $(1).
define iteration_rules
$(foreach k,$(SHARD_IDS),$(eval $(call shard_rules,$(1),$(k))))

$(RUN)/$(1)/rollout.safe: $(call shard_files,$(1),rollout)
	@$(B)/safe-cat --level $(LEVEL) -o $$@ $$^

$(RUN)/$(1)/scored.safe: $(call shard_files,$(1),scored) $(RUN)/$(1)/rollout.safe
	@$(B)/safe-cat --level $(LEVEL) -o $$@ $(call shard_files,$(1),scored)

.SECONDARY: $(call shard_files,$(1),rollout) $(call shard_files,$(1),scored)

$(RUN)/$(1)/adv.safe: $(RUN)/$(1)/scored.safe $(call critic_dep,$(1)) $(call control_path,$(1))
	@$(LAUNCH_DP) $(B)/safe-critic $(call critic_arg,$(1)) --control $(call control_path,$(1)) \
	  --algo $(ALGO) --seed $(SEED) --level $(LEVEL) $(QUIET) $(DEV) $(CRITIC_OPTS) \
	  -i $$< -o $$@ --out-critic $(RUN)/$(1)/critic

$(RUN)/$(1)/stats.safe: $(RUN)/$(1)/adv.safe $(call policy_dep,$(1)) $(call control_path,$(1))
	@$(LAUNCH_DP) $(B)/safe-update --policy $(call policy_path,$(1)) --control $(call control_path,$(1)) \
	  --algo $(ALGO) --seed $(SEED) --level $(LEVEL) $(QUIET) $(DEV) $(UPDATE_OPTS) \
	  -i $$< -o $(RUN)/$(1)/policy --stats $$@

$(RUN)/$(1)/control.safe: $(RUN)/$(1)/stats.safe $(call control_path,$(1))
	@$(B)/safe-pid --algo $(ALGO) --control $(call control_path,$(1)) $(PID_OPTS) --level $(LEVEL) \
	  --quiet -o $$@ $$<
	@$(B)/safe-report --line $(REPORT_OPTS) $(RUN)/$(1)
	$(if $(KEEP_OPT),@$(call prune_opt,$(call num,$(1))))
endef

# Shell: delete the AdamW moments of iterations <= $(1) - KEEP_OPT (see Disk above).
prune_opt = last=$$$$(( $(1) - $(KEEP_OPT) )); for d in $(RUN)/[0-9][0-9][0-9][0-9]; do \
	  [ -d "$$$$d" ] && [ "$$$$(expr "$$$${d\#\#*/}" + 0)" -le "$$$$last" ] || continue; \
	  rm -f "$$$$d/policy/optimizer.safetensors" "$$$$d/critic/optimizer.safetensors" \
	        "$$$$d/critic/value_head_optimizer.safetensors"; done

$(foreach i,$(ITER_NAMES),$(eval PREV_$(i) := $(_last))$(eval _last := $(i))$(eval $(call iteration_rules,$(i))))
