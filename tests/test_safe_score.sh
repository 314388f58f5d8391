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

# The default lexicon without SAFE_DATA: ../shared/data from the current directory, else beside
# the checkout whose bin/ holds the program, else PREFIX/share/safe/data; run from elsewhere.
# (Copies of the program: /proc/self/exe sees through symlinks.)
L="$TMP/layout"
mkdir -p "$L/tree/repo/bin" "$L/tree/shared/data/vader" "$L/prefix/bin" "$L/prefix/share/safe/data/vader" \
    "$L/lonely/bin" "$L/away/deeper"
for d in tree/repo prefix lonely; do cp "$SAFE_BIN/safe-score" "$L/$d/bin/"; done
cp "$DATA/vader/vader_lexicon.txt" "$L/tree/shared/data/vader/"
cp "$DATA/vader/vader_lexicon.txt" "$L/prefix/share/safe/data/vader/"
lexicon_of() { safe-cat --header "$1" | jq -r '.scorer' | sed -n 's/^vader lexicon=\([^ ]*\) .*/\1/p'; }
(cd "$L/away/deeper" && env -u SAFE_DATA "$L/tree/repo/bin/safe-score" --quiet "$TMP/roll.safe" >"$TMP/tree.safe")
check data_beside_checkout [ "$(lexicon_of "$TMP/tree.safe")" = "$L/tree/shared/data/vader/vader_lexicon.txt" ]
check data_beside_checkout_same_rewards sh -c "safe-cat '$TMP/tree.safe' | cmp -s - '$TMP/stdin.jsonl'"
(cd "$L/away/deeper" && env -u SAFE_DATA "$L/prefix/bin/safe-score" --quiet "$TMP/roll.safe" >"$TMP/prefix.safe")
check data_install_prefix [ "$(lexicon_of "$TMP/prefix.safe")" = "$L/prefix/share/safe/data/vader/vader_lexicon.txt" ]
# the current directory's ../shared/data comes first (what the tests and the demo have always used)
mkdir -p "$L/away/shared/data/vader" && cp "$DATA/vader/vader_lexicon.txt" "$L/away/shared/data/vader/"
(cd "$L/away/deeper" && env -u SAFE_DATA "$L/tree/repo/bin/safe-score" --quiet "$TMP/roll.safe" >"$TMP/cwd.safe")
check data_cwd_first [ "$(lexicon_of "$TMP/cwd.safe")" = "../shared/data/vader/vader_lexicon.txt" ]
rm -r "$L/away/shared"
# nowhere: exit 2, naming every path tried and how to set it
(cd "$L/away/deeper" && expect_status data_nowhere 2 env -u SAFE_DATA "$L/lonely/bin/safe-score" "$TMP/roll.safe")
check data_nowhere_names_paths sh -c "grep -qF '../shared/data/vader/vader_lexicon.txt (a checkout'\''s data, relative to $L/away/deeper)' '$TMP/err' &&
    grep -qF '$L/shared/data/vader/vader_lexicon.txt' '$TMP/err' && grep -qF '$L/lonely/share/safe/data/vader/vader_lexicon.txt' '$TMP/err'"
check data_nowhere_hint grep -q 'set SAFE_DATA.*--vader PATH' "$TMP/err"
# SAFE_DATA is the only place looked at when set
expect_status data_env_missing 2 env SAFE_DATA="$L/nowhere" "$L/tree/repo/bin/safe-score" "$TMP/roll.safe"
check data_env_missing_message sh -c "grep -qF '$L/nowhere/vader/vader_lexicon.txt (\$SAFE_DATA)' '$TMP/err' &&
    ! grep -q 'tree/shared' '$TMP/err' && grep -q 'point SAFE_DATA' '$TMP/err'"

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
# the summary's mean is over the finite rewards (5, 0, 11) and says how many it left out
check exec_nan_summary grep -q "^safe-score: 4 records (1 non-finite reward: left out of the mean), mean reward 5.33333, " "$TMP/err"
safe-score --exec "$SCORER" --level 0 "$TMP/roll.safe" >/dev/null 2>"$TMP/err"
check exec_summary_all_finite grep -q "^safe-score: 4 records, mean reward 5, 0 missing-EOS penalties, 0 clipped$" "$TMP/err"
# msgpack float64 NaN (0xcb 7ff8...) for reward_raw and reward; safe-cat prints NaN as null
check exec_nan_is_nan sh -c "[ \$(od -An -v -tx1 '$TMP/nan.safe' | tr -d ' \n' | grep -o 'cb7ff8000000000000' | wc -l) -eq 2 ]"
check exec_nan_record jqs "$TMP/nan.safe" '.[1].reward == null and .[0].reward == 5'

# Every spelling of a non-finite number is one (an optional sign and nan, inf or infinity in any
# case; a number beyond the double range): written through as NaN or +-Infinity with a warning
# naming the record, and never clipped. f64: NaN cb7ff8.., +Infinity cb7ff0.., -Infinity cbfff0..
NAN64=cb7ff8000000000000 PINF64=cb7ff0000000000000 NINF64=cbfff0000000000000
for c in "nan $NAN64" "-nan $NAN64" "NaN $NAN64" "inf $PINF64" "+Inf $PINF64" "Infinity $PINF64" \
            "-inf $NINF64" "-INFINITY $NINF64" "1e999 $PINF64" "-1.5e400 $NINF64" '{"reward":-inf} '$NINF64; do
    set -- $c
    name=$(printf '%s' "$1" | tr -c 'A-Za-z0-9.+-' _)
    safe-score --exec "while read -r l; do case \$l in *'\"id\":\"r2\"'*) echo '$1';; *) echo 1;; esac; done" \
        --clip-reward 0.5 --level 0 "$TMP/roll.safe" >"$TMP/nf.safe" 2>"$TMP/err"
    check "exec_nonfinite_${name}_passes" [ $? -eq 0 ]
    check "exec_nonfinite_${name}_warns" grep -q "non-finite reward (first: 'r2')" "$TMP/err"
    # reward_raw and reward (unclipped) both carry it; the other records are finite and clipped
    check "exec_nonfinite_${name}_value" sh -c "[ \$(od -An -v -tx1 '$TMP/nf.safe' | tr -d ' \n' | grep -o '$2' | wc -l) -eq 2 ]"
    check "exec_nonfinite_${name}_others" jqs "$TMP/nf.safe" '[.[].reward] == [0.5, null, 0.5, 0.5]'
done
# a string is never a number, and a non-finite word must stand alone: exit 2, naming record and field
expect_status exec_nan_string 2 safe-score --exec "while read l; do echo '{\"reward\": \"NaN\"}'; done" "$TMP/roll.safe"
check exec_nan_string_message grep -q "answered record 'r1' with garbage (\"reward\" is not a number)" "$TMP/err"
for junk in '"inf"' nanx 'NaN(1)' 1e999x '- inf' '+1' 'inf inf'; do
    expect_status "exec_garbage_$(printf '%s' "$junk" | tr -c 'A-Za-z0-9' _)" 2 \
        safe-score --exec "while read l; do echo '$junk'; done" "$TMP/roll.safe"
done
check exec_garbage_lookalike_message grep -q "answered record 'r1' with garbage" "$TMP/err"

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
