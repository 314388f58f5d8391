# test_safe_score.sh — safe-score end to end: VADER rewards, the --exec protocol and its
# failures, --missing-eos-penalty and --clip-reward arithmetic. Run through make test.
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit 1
SCORER="python3 tests/scorers/length_reward.py"

# A small rollout: text fields as safe-rollout writes them.
cat >"$TMP/roll.jsonl" <<'EOF'
{"id": "r1", "prompt": "Once upon a time", "response": " the girl was very happy!", "finish": "eos"}
{"id": "r2", "prompt": "The dog", "response": " was sad and angry.", "finish": "length"}
{"id": "r3", "prompt": "It was", "response": "", "finish": "eos"}
{"id": "r4", "prompt": "Tom said", "response": " it is not good at all, but the cake was GREAT!!", "finish": "length"}
EOF
safe-cat --to-shard "$TMP/roll.jsonl" -o "$TMP/roll.safe" || { fail setup_rollout_shard "safe-cat --to-shard failed"; exit 0; }

# jq over a shard: jqs FILE FILTER (-s: all records as one array)
jqs() { safe-cat "$1" | jq -s -e "$2" >/dev/null; }

# ---- VADER ------------------------------------------------------------------------------
# Reference values: vaderSentiment 3.3.2 polarity_scores(response)["compound"], unrounded.
safe-score --quiet "$TMP/roll.safe" >"$TMP/vader.safe" 2>"$TMP/err"
check vader_default_scorer [ $? -eq 0 ]
check vader_rewards jqs "$TMP/vader.safe" '
  def near(a; b): ((a - b) | fabs) < 1e-12;
  length == 4
  and near(.[0].reward; 0.6468437538246097) and near(.[1].reward; -0.7506303133284344)
  and .[2].reward == 0 and near(.[3].reward; 0.823904277486419)
  and all(.[]; .reward == .reward_raw and .reward == .reward_components.compound)
  and all(.[]; (.reward_components | keys) == ["compound", "neg", "neu", "pos"])
  and all(.[]; has("reward_eos_penalty") | not)
  and all(.[]; has("prompt") and has("finish"))'
safe-score --quiet <"$TMP/roll.safe" | safe-cat >"$TMP/stdin.jsonl"
check vader_stdin_same sh -c "safe-cat '$TMP/vader.safe' | cmp -s - '$TMP/stdin.jsonl'"
check vader_header sh -c "safe-cat --header '$TMP/vader.safe' | jq -e '.kind == \"scored\" and .tool == \"safe-score\" and (.scorer | startswith(\"vader \"))' >/dev/null"
safe-score --quiet --vader "$DATA/vader/vader_lexicon.txt" --score-field prompt+response \
    -i "$TMP/roll.safe" -o "$TMP/vader_pr.safe"
check vader_prompt_response jqs "$TMP/vader_pr.safe" '
  (.[0].reward_components.pos - 0.3487993487993488 | fabs) < 1e-12
  and .[2].reward_components.neu == 1'
expect_status vader_missing_lexicon 2 safe-score --vader=/nonexistent/lexicon.txt "$TMP/roll.safe"
check vader_missing_lexicon_message grep -q '/nonexistent/lexicon.txt' "$TMP/err"

# ---- penalty and clipping -----------------------------------------------------------------
safe-score --quiet --missing-eos-penalty 0.25 "$TMP/roll.safe" >"$TMP/pen.safe"
check eos_penalty jqs "$TMP/pen.safe" '
  (.[1].reward - (-0.7506303133284344 - 0.25) | fabs) < 1e-12 and .[1].reward_eos_penalty == -0.25
  and (.[3].reward - (0.823904277486419 - 0.25) | fabs) < 1e-12
  and .[0].reward == .[0].reward_raw and (.[0] | has("reward_eos_penalty") | not)
  and (.[1].reward_raw - -0.7506303133284344 | fabs) < 1e-12'
safe-score --quiet --missing-eos-penalty 0.5 --clip-reward 0.6 "$TMP/roll.safe" >"$TMP/clip.safe"
check clip_after_penalty jqs "$TMP/clip.safe" '
  ((.[0].reward - 0.6) | fabs) < 1e-12 and .[1].reward == -0.6
  and (.[3].reward - (0.823904277486419 - 0.5) | fabs) < 1e-12 and .[2].reward == 0'
# rescoring a scored shard without the penalty drops the stale field
safe-score --quiet "$TMP/pen.safe" >"$TMP/rescored.safe"
check rescore_drops_penalty jqs "$TMP/rescored.safe" 'all(.[]; has("reward_eos_penalty") | not)'
expect_status usage_two_scorers 1 safe-score --vader --exec cat "$TMP/roll.safe"
expect_status usage_negative_penalty 1 safe-score --missing-eos-penalty -1 "$TMP/roll.safe"
expect_status usage_zero_clip 1 safe-score --clip-reward 0 "$TMP/roll.safe"
echo '{"id": "x1", "prompt": "p", "finish": "eos"}' | safe-cat --to-shard -o "$TMP/noresp.safe"
expect_status bad_input_no_response 2 safe-score "$TMP/noresp.safe"
check bad_input_names_field grep -q 'response' "$TMP/err"

# ---- --exec --------------------------------------------------------------------------------
safe-score --quiet --exec "$SCORER" "$TMP/roll.safe" >"$TMP/exec.safe"
check exec_rewards jqs "$TMP/exec.safe" '
  [.[].reward] == [5, 4, 0, 11] and [.[].reward_raw] == [5, 4, 0, 11]
  and .[0].reward_components == {"chars": 25, "prompt_words": 4}
  and .[3].reward_components.chars == 48'
check exec_header sh -c "safe-cat --header '$TMP/exec.safe' | jq -e '.scorer == \"exec cmd=$SCORER\"' >/dev/null"
safe-score --quiet --exec "$SCORER --bare" --exec-batch 1 --missing-eos-penalty 1 --clip-reward 4.5 \
    "$TMP/roll.safe" >"$TMP/exec2.safe"
check exec_bare_penalty_clip jqs "$TMP/exec2.safe" '
  [.[].reward] == [4.5, 3, 0, 4.5] and [.[].reward_raw] == [5, 4, 0, 11]
  and all(.[]; .reward_components == {})'

# NaN passes through (safe-critic stops on it), with a warning naming the record
safe-score --exec "$SCORER --nan-id r2" --level 0 "$TMP/roll.safe" >"$TMP/nan.safe" 2>"$TMP/err"
check exec_nan_succeeds [ $? -eq 0 ]
check exec_nan_warns grep -q "r2" "$TMP/err"
# msgpack float64 NaN (0xcb 7ff8...) for reward_raw and reward; safe-cat prints NaN as null
check exec_nan_is_nan sh -c "[ \$(od -An -v -tx1 '$TMP/nan.safe' | tr -d ' \n' | grep -o 'cb7ff8000000000000' | wc -l) -eq 2 ]"
check exec_nan_record jqs "$TMP/nan.safe" '.[1].reward == null and .[0].reward == 5'

# failures: exit 3 for a dead or hung scorer, 2 for garbage; messages name command and record
expect_status exec_dies_at_once 3 safe-score --exec 'exit 7' -o "$TMP/dead.safe" "$TMP/roll.safe"
check exec_dies_message grep -q "'exit 7' exited with status 7 before answering record 'r1'" "$TMP/err"
check exec_dies_no_output sh -c "! ls '$TMP' | grep -q dead"
expect_status exec_dies_midway 3 safe-score --exec "$SCORER --die-after 2" "$TMP/roll.safe"
check exec_dies_midway_record grep -q "record 'r3'" "$TMP/err"
expect_status exec_not_found 3 safe-score --exec 'no-such-scorer-command' "$TMP/roll.safe"
expect_status exec_garbage 2 safe-score --exec 'while read l; do echo hello; done' "$TMP/roll.safe"
check exec_garbage_message grep -q "answered record 'r1' with garbage" "$TMP/err"
expect_status exec_no_reward_key 2 safe-score --exec "while read l; do echo '{\"score\": 1}'; done" "$TMP/roll.safe"
expect_status exec_reward_not_number 2 safe-score --exec "while read l; do echo '{\"reward\": \"high\"}'; done" "$TMP/roll.safe"
t0=$(date +%s)
expect_status exec_hangs 3 safe-score --exec 'exec sleep 30' --exec-timeout 0.5 "$TMP/roll.safe"
check exec_hang_message grep -q "no answer for record 'r1' within 0.5 s" "$TMP/err"
check exec_hang_is_quick [ $(( $(date +%s) - t0 )) -lt 5 ]

# big requests and big answers with 16 in flight: no pipe deadlock
python3 -c "
import json
for i in range(24): print(json.dumps({'id': 'b%d' % i, 'prompt': 'p', 'response': 'word ' * 20000 + 'x' * i, 'finish': 'eos'}))
" | safe-cat --to-shard -o "$TMP/big.safe"
safe-score --quiet --exec "$SCORER --pad 200000" --exec-batch 16 "$TMP/big.safe" >"$TMP/big_out.safe"
expect_status exec_dies_while_writing 3 safe-score --exec 'head -c 10 >/dev/null; exit 5' "$TMP/big.safe"
check exec_dies_while_writing_message grep -q "exited with status 5 before answering record 'b0'" "$TMP/err"
check exec_big_no_deadlock jqs "$TMP/big_out.safe" 'length == 24 and .[0].reward == 20000 and .[23].reward == 20001'
