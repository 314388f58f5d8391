#!/bin/sh
# test_safe_cat.sh — safe-cat: JSON lines <-> shards, pipes, joining, header checks, atomic
# output under kill -9, truncated input, JSON errors, options.
. "$(dirname "$0")/lib.sh"
cd "$TMP" || exit 1

# A JSON lines file with every kind of value a record holds.
cat > in.jsonl <<'EOF'
{"id":"p0-s0","prompt_id":"p0","sample":0,"prompt":"Once upon a \"time\"\n","response":"héllo ☃ \u0001","prompt_tokens":[1,2,3],"response_tokens":[7,8,-9,2147483647],"finish":"eos","logp":[-0.5,-1.25,0.100000001,-3.40282347e+38],"reward":0.7,"big":-9007199254740993,"ok":true,"none":null,"nested":{"a":[1,2.5,"s",null,{"deep":[true]}],"b":{}},"mine":[1.5,2.0],"ints":[4,5,6]}
{"id":"p0-s1","prompt_id":"p0","sample":1,"prompt":"","response":"","prompt_tokens":[],"response_tokens":[5],"finish":"length","logp":[1.40129846e-45],"reward":-1e-300,"big":4611686018427387904,"ok":false,"none":null,"nested":{},"mine":[3.0,-0.0],"ints":[0,0,0]}
{"id":"p1-s0","prompt_id":"p1","sample":0,"prompt":"x","response":"y","prompt_tokens":[4],"response_tokens":[6,6],"finish":"eos","logp":[0.25,null],"reward":2.0,"big":0,"ok":true,"none":null,"nested":{"k":"v"},"mine":[0.5,1.00000002e+20],"ints":[-1,1,2]}
EOF

# ---- round trips ------------------------------------------------------------------------
safe-cat in.jsonl > a.safe 2>err; st=$?
hex() { head -c "$2" "$1" | od -An -tx1 | tr -d ' \n'; }
check jsonl_to_shard_auto [ "$st" -eq 0 -a "$(hex a.safe 4)" = "28b52ffd" ]
safe-cat a.safe > a.jsonl
check shard_to_jsonl_values sh -c 'jq -e -n --slurpfile a in.jsonl --slurpfile b a.jsonl "\$a == \$b" >/dev/null'
safe-cat a.jsonl > b.safe && safe-cat b.safe > b.jsonl
check jsonl_shard_jsonl_byte_identical cmp -s a.jsonl b.jsonl
check float_text_keeps_dot grep -q '"mine":\[3.0,-0.0\],"ints":\[0,0,0\]' a.jsonl
check nan_is_null grep -q '"logp":\[0.25,null\]' a.jsonl
check f32_exact grep -q '"logp":\[-0.5,-1.25,0.100000001,-3.40282347e+38\]' a.jsonl

safe-cat --header a.safe > h.json
check header_dtypes_inferred sh -c 'jq -e ".dtypes.mine == \"f32\" and .dtypes.ints == \"i32\" and .dtypes.logp == \"f32\" and .kind == \"records\" and .version == 1" h.json >/dev/null'
safe-cat --with-header a.safe > ah.jsonl
safe-cat --with-header a.safe | safe-cat --to-shard > c.safe
check with_header_round_trip_same_bytes cmp -s a.safe c.safe
safe-cat --header --all a.safe | cmp -s - ah.jsonl
check header_all_is_with_header [ $? -eq 0 ]

# through pipes, compressed and raw, with jq in the middle
cat a.safe | safe-cat | jq -c 'select(.sample == 0)' | safe-cat --to-shard --header-from a.safe > d.safe
check pipe_jq_filter [ "$(safe-cat d.safe | wc -l)" -eq 2 -a "$(safe-cat --header d.safe)" = "$(cat h.json)" ]
safe-cat --level 0 -o r.safe in.jsonl
check level0_is_raw_msgpack [ "$(hex r.safe 1)" = "86" ]   # fixmap of the 6 header keys
check raw_shard_reads_same sh -c 'safe-cat r.safe | cmp -s - a.jsonl'
check zstd_cli_decompresses sh -c 'zstd -dc a.safe | safe-cat | cmp -s - a.jsonl'
check zstd_cli_compressed_raw sh -c 'zstd -qc r.safe | safe-cat - | cmp -s - a.jsonl'
printf '' | safe-cat --to-shard > empty.safe
check empty_jsonl_to_empty_shard sh -c '[ "$(safe-cat empty.safe | wc -c)" -eq 0 ] && safe-cat --header empty.safe | jq -e ".kind == \"records\"" >/dev/null'

# ---- options ----------------------------------------------------------------------------
check head_n [ "$(safe-cat --head 2 a.safe | wc -l)" -eq 2 ]
check fields_select [ "$(safe-cat --head 1 --fields reward,id a.safe)" = '{"reward":0.7,"id":"p0-s0"}' ]
safe-cat --fields id,prompt_tokens -o f.safe a.safe
check fields_to_shard [ "$(safe-cat --head 1 f.safe)" = '{"id":"p0-s0","prompt_tokens":[1,2,3]}' ]
safe-cat -o out.jsonl a.safe
check output_jsonl_by_name cmp -s out.jsonl a.jsonl
check help_exit0 sh -c 'safe-cat --help | grep -q -- --to-shard'
check version_exit0 sh -c 'safe-cat --version | grep -q "safe-cat"'
expect_status usage_error 1 safe-cat --no-such-option a.safe
expect_status bad_level 1 safe-cat --level 99 --to-shard in.jsonl
expect_status missing_file 2 safe-cat does-not-exist.safe

# ---- joining ----------------------------------------------------------------------------
safe-cat -o all.safe a.safe b.safe
check join_by_output_name [ "$(safe-cat all.safe | wc -l)" -eq 6 ]
safe-cat --to-shard a.safe b.safe > all2.safe
check join_to_stdout cmp -s all.safe all2.safe
mk() {   # mk FILE MODEL ITERATION: a one-record shard with that header
    printf '{"format":"safe-shard","version":1,"kind":"rollout","model":"%s","tokenizer":"t","iteration":%s}\n{"id":"x","reward":1.0}\n' "$2" "$3" |
        safe-cat --to-shard > "$1"
}
mk m1.safe m1 3; mk m1b.safe m1 3; mk m2.safe m2 3; mk m1i4.safe m1 4
expect_status join_same_header 0 safe-cat -o j.safe m1.safe m1b.safe
expect_status join_model_mismatch 2 safe-cat -o j.safe m1.safe m2.safe
check mismatch_message_names_file_and_field grep -q 'm2.safe: header: field "model"' "$TMP/err"
expect_status join_iteration_mismatch 2 safe-cat -o j.safe m1.safe m1i4.safe
check iteration_message_says_force grep -q 'iteration.*--force' "$TMP/err"
expect_status join_iteration_force 0 safe-cat --force -o j.safe m1.safe m1i4.safe
check forced_header_has_no_iteration sh -c 'safe-cat --header j.safe | jq -e "has(\"iteration\") | not" >/dev/null'
cat a.safe b.safe > catted.safe
expect_status cat_joined_is_rejected 2 safe-cat catted.safe
check cat_joined_message grep -q 'second shard header' "$TMP/err"

# ---- atomic output: a killed writer leaves no file under the final name -----------------
mkfifo fifo
safe-cat --to-shard -o killed.safe < fifo 2>/dev/null &
pid=$!
exec 3> fifo
head -n 2 in.jsonl >&3
sleep 0.3
check writer_uses_temp_name sh -c "[ ! -e killed.safe ] && ls killed.safe.tmp.* >/dev/null 2>&1"
kill -9 "$pid"
wait "$pid" 2>/dev/null
exec 3>&-
check kill9_leaves_no_final_file [ ! -e killed.safe ]
rm -f killed.safe.tmp.*
safe-cat --to-shard -o termed.safe < fifo 2>/dev/null &
pid=$!
exec 3> fifo
head -n 1 in.jsonl >&3
sleep 0.3
kill -TERM "$pid"
wait "$pid" 2>/dev/null
exec 3>&-
check sigterm_leaves_nothing sh -c "[ ! -e termed.safe ] && ! ls termed.safe.tmp.* >/dev/null 2>&1"

# ---- truncated input: exit 2 naming the file and the record, never a hang ---------------
n=$(wc -c < a.safe)
bad=0
i=0
while [ "$i" -lt "$n" ]; do
    head -c "$i" a.safe > t.safe
    timeout 10 safe-cat t.safe > /dev/null 2> t.err
    st=$?
    if [ "$st" -ne 2 ] || ! grep -q 't.safe: \(record [0-9]\|header\|empty input\)' t.err; then
        [ "$bad" -lt 3 ] && echo "  offset $i of $n: exit $st: $(cat t.err)"
        bad=$((bad + 1))
    fi
    i=$((i + 1))
done
check truncated_every_offset_exit2 [ "$bad" -eq 0 ]
# a shard of several zstd blocks, cut in the middle: the message names the last good record
awk 'BEGIN { srand(1); for (i = 0; i < 3000; i++) { printf "{\"id\":%d,\"logp\":[", i;
             for (k = 0; k < 30; k++) printf "%s%.6f", (k ? "," : ""), -10 * rand();
             print "]}" } }' | safe-cat --to-shard > long.safe
n=$(wc -c < long.safe)
head -c $((n / 2)) long.safe > t2.safe
timeout 10 safe-cat t2.safe > /dev/null 2> t2.err
check truncated_message_has_record_index grep -q 't2.safe: record [0-9]*: truncated after record [0-9]' t2.err

# ---- bad JSON: exit 2 naming file, line, field ------------------------------------------
printf '{"id":"a"}\n{"id":"b"}\n{"id": oops}\n' > bad1.jsonl
expect_status json_syntax_error 2 safe-cat --to-shard -o x.safe bad1.jsonl
check json_error_names_line grep -q 'bad1.jsonl: line 3: column' "$TMP/err"
printf '{"prompt_tokens":[1,2]}\n{"prompt_tokens":[1,"x"]}\n' > bad2.jsonl
expect_status json_wrong_element 2 safe-cat --to-shard -o x.safe bad2.jsonl
check json_error_names_field grep -q 'bad2.jsonl: line 2: field "prompt_tokens": element 1' "$TMP/err"
printf '[1,2]\n' > bad3.jsonl
expect_status json_not_object 2 safe-cat --to-shard -o x.safe bad3.jsonl
printf '{"format":"safe-shard","version":2}\n' > bad4.jsonl
expect_status json_header_version 2 safe-cat --to-shard -o x.safe bad4.jsonl
check json_header_version_message grep -q 'unsupported shard version 2' "$TMP/err"
check bad_json_leaves_no_output [ ! -e x.safe ]
