#!/bin/sh
# test_generate.sh — the safe-generate probe on stories260K: same seed, same text; exit codes.
. "$(dirname "$0")/lib.sh"
MODEL="$DATA/stories260K/stories260K.bin"

safe-generate --model "$MODEL" --prompt "Once upon a time" --temperature 0.8 --seed 7 --max-new-tokens 120 -q >"$TMP/a" 2>"$TMP/a.err"
safe-generate --model "$MODEL" --prompt "Once upon a time" --temperature 0.8 --seed 7 --max-new-tokens 120 -q --batch 3 >"$TMP/b" 2>&1
safe-generate --model "$MODEL" --prompt "Once upon a time" --temperature 0.8 --seed 8 --max-new-tokens 120 -q >"$TMP/c" 2>&1
check generate_same_seed_same_text cmp -s "$TMP/a" "$TMP/b"
check generate_other_seed_other_text sh -c "! cmp -s '$TMP/a' '$TMP/c'"
check generate_starts_with_prompt grep -q "^Once upon a time" "$TMP/a"
# a story: several sentences of mostly known words
check generate_coherent_story sh -c "[ \$(grep -o '\\. ' '$TMP/a' | wc -l) -ge 2 ] && grep -qwE 'was|she|he|the' '$TMP/a'"

# stdin: JSON lines with ids, several samples each; jsonl output
head -3 "$DATA/tinystories/prompts.jsonl" | safe-generate --model "$MODEL" -n 2 --max-new-tokens 16 --format jsonl -q >"$TMP/j" 2>"$TMP/j.err"
check generate_stdin_jsonl sh -c "[ \$(wc -l <'$TMP/j') -eq 6 ] && grep -q '\"id\":\"ts-0003\",\"sample\":1' '$TMP/j'"
# the same prompt and sample index give the same text whatever else is in the batch
head -1 "$DATA/tinystories/prompts.jsonl" | safe-generate --model "$MODEL" -n 2 --max-new-tokens 16 --format jsonl -q >"$TMP/j1"
check generate_independent_of_batch sh -c "head -2 '$TMP/j' | cmp -s - '$TMP/j1'"
printf 'The cat\n\nOnce\n' | safe-generate --model "$MODEL" --greedy --max-new-tokens 8 -q >"$TMP/g"
check generate_stdin_text_greedy sh -c "grep -q '^The cat' '$TMP/g' && grep -q '^Once' '$TMP/g'"

expect_status generate_help 0 safe-generate --help
expect_status generate_version 0 safe-generate --version
expect_status generate_bad_option 1 safe-generate --model "$MODEL" --bogus
expect_status generate_zero_temperature 1 safe-generate --model "$MODEL" --prompt x --temperature 0
expect_status generate_bad_top_p 1 safe-generate --model "$MODEL" --prompt x --top-p 1.5
expect_status generate_no_model 1 safe-generate --prompt x
expect_status generate_missing_model 2 safe-generate --model "$TMP/nope.bin" --prompt x
printf 'not a model' >"$TMP/junk.bin"
expect_status generate_junk_model 2 safe-generate --model "$TMP/junk.bin" --prompt x
expect_status generate_bad_jsonl 2 sh -c "echo '{\"prompt\": 3}' | safe-generate --model '$MODEL' -q"
