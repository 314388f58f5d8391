# test_hf_tools.sh — the model-format tools end to end: safe-convert (llama2.c .bin / GGUF / HF
# directory -> HF directory) and safe-score --rm (a sequence-classification reward model), on
# the fixtures of tests/gen/gen_hf_ref.py; safe-rollout on an HF directory, and on SmolLM2's
# GGUF when models/ has it. Run through make test.
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit 1
HF=tests/fixtures/hf
SMOLLM2=models/SmolLM2-135M-Instruct.Q4_1.gguf

# ---- safe-convert -------------------------------------------------------------------------
# The F32 GGUF of llama_untied (q/k rows permuted the llama.cpp way) converts to exactly the
# bytes the HF directory itself converts to: the permutation is undone.
safe-convert --quiet $HF/tiny_llama.gguf "$TMP/from-gguf" 2>"$TMP/err"
safe-convert --quiet $HF/llama_untied "$TMP/from-hf" 2>>"$TMP/err"
check convert_gguf_equals_hf cmp -s "$TMP/from-gguf/model.safetensors" "$TMP/from-hf/model.safetensors"
check convert_hf_tokenizer_copied sh -c "cmp -s $HF/llama_untied/tokenizer.json '$TMP/from-hf/tokenizer.json' &&
  cmp -s $HF/llama_untied/tokenizer_config.json '$TMP/from-hf/tokenizer_config.json' &&
  test -f '$TMP/from-hf/generation_config.json'"
# (tiny_llama.gguf's gpt2 tokenizer has no merges: tokenizer.gguf, not tokenizer.json)
check convert_gguf_tokenizer sh -c "test -f '$TMP/from-gguf/tokenizer.gguf' &&
  jq -e '.architectures == [\"LlamaForCausalLM\"] and .tie_word_embeddings == false and .bos_token_id == 1' '$TMP/from-gguf/config.json' >/dev/null"
# F16 shards + index.json -> one F32 file, and converting our own output again is byte-identical
safe-convert --quiet $HF/llama_tied_sharded "$TMP/sharded" 2>/dev/null
safe-convert --quiet "$TMP/sharded" "$TMP/sharded2" 2>/dev/null
check convert_sharded_idempotent sh -c "test -f '$TMP/sharded/model.safetensors' &&
  cmp -s '$TMP/sharded/model.safetensors' '$TMP/sharded2/model.safetensors' &&
  cmp -s '$TMP/sharded/config.json' '$TMP/sharded2/config.json'"
if [ -f "$DATA/stories260K/stories260K.bin" ]; then
    safe-convert --quiet "$DATA/stories260K/stories260K.bin" "$TMP/stories" 2>/dev/null
    safe-convert --quiet "$TMP/stories" "$TMP/stories2" 2>/dev/null
    check convert_llama2c sh -c "test -f '$TMP/stories/tokenizer.bin' && cmp -s '$TMP/stories/model.safetensors' '$TMP/stories2/model.safetensors'"
fi
expect_status convert_usage 1 safe-convert $HF/llama_untied
expect_status convert_missing_input 2 safe-convert "$TMP/nonexistent.gguf" "$TMP/x"
expect_status convert_same_path 1 safe-convert "$TMP/from-hf" "$TMP/from-hf"

# ---- safe-score --rm ----------------------------------------------------------------------
# rm_text.jsonl: texts, their token ids under the fixture tokenizer and transformers' score
# (LlamaForSequenceClassification, float64). Records carry the ids split into prompt/response.
jq -c '{id, prompt, response, finish: "eos", prompt_tokens: .ids[:3], response_tokens: .ids[3:]}' \
    $HF/rm_text.jsonl >"$TMP/rm.jsonl"
safe-cat --to-shard "$TMP/rm.jsonl" -o "$TMP/rm.safe" 2>/dev/null
jq -s '[.[].score]' $HF/rm_text.jsonl >"$TMP/want.json"
near='def near(a; b): ((a - b) | fabs) / ([(b | fabs), 1] | max) < 1e-5;'
safe-score --quiet --rm $HF/rm_llama --rm-batch 2 -i "$TMP/rm.safe" -o "$TMP/rm_scored.safe" 2>"$TMP/err"
check rm_tokens_scores sh -c "safe-cat '$TMP/rm_scored.safe' | jq -s -e --slurpfile w '$TMP/want.json' '$near
  length == 3 and ([range(3) as \$i | near(.[\$i].reward; \$w[0][\$i])] | all)
  and all(.[]; .reward_raw == .reward and .reward_components.score == .reward)' >/dev/null"
check rm_header sh -c "safe-cat --header '$TMP/rm_scored.safe' | jq -e '.scorer | startswith(\"rm dir=\") and contains(\"input=tokens\")' >/dev/null"
safe-score --quiet --rm $HF/rm_llama --rm-input text -i "$TMP/rm.safe" -o "$TMP/rm_text.safe" 2>"$TMP/err"
check rm_text_scores sh -c "safe-cat '$TMP/rm_text.safe' | jq -s -e --slurpfile w '$TMP/want.json' '$near
  length == 3 and ([range(3) as \$i | near(.[\$i].reward; \$w[0][\$i])] | all)' >/dev/null"
safe-score --quiet --rm $HF/rm_llama --rm-max-length 4 -i "$TMP/rm.safe" -o "$TMP/rm_r.safe" 2>/dev/null
safe-score --quiet --rm $HF/rm_llama --rm-max-length 4 --rm-truncation left -i "$TMP/rm.safe" -o "$TMP/rm_l.safe" 2>/dev/null
check rm_truncation_sides sh -c "a=\$(safe-cat '$TMP/rm_r.safe' | jq -s -c '[.[].reward]'); b=\$(safe-cat '$TMP/rm_l.safe' | jq -s -c '[.[].reward]');
  test -n \"\$a\" && test \"\$a\" != \"\$b\" && safe-cat --header '$TMP/rm_r.safe' | jq -e '.reward_max_length == 4' >/dev/null"
expect_status rm_and_vader 1 safe-score --rm $HF/rm_llama --vader "$TMP/rm.safe"
expect_status rm_option_without_rm 1 safe-score --rm-batch 4 "$TMP/rm.safe"
expect_status rm_bad_truncation 1 safe-score --rm $HF/rm_llama --rm-truncation middle "$TMP/rm.safe"
expect_status rm_causal_lm 2 safe-score --rm $HF/llama_untied "$TMP/rm.safe"
echo '{"id":"x","prompt":"a","response":"b","finish":"eos","prompt_tokens":[1,5000],"response_tokens":[7]}' >"$TMP/oov.jsonl"
safe-cat --to-shard "$TMP/oov.jsonl" -o "$TMP/oov.safe" 2>/dev/null
expect_status rm_token_outside_vocab 2 safe-score --rm $HF/rm_llama "$TMP/oov.safe"
check rm_token_outside_vocab_hint grep -q -- "--rm-input text" "$TMP/err"
echo '{"id":"y","prompt":"a","response":"b","finish":"eos"}' >"$TMP/notok.jsonl"
safe-cat --to-shard "$TMP/notok.jsonl" -o "$TMP/notok.safe" 2>/dev/null
expect_status rm_record_without_tokens 2 safe-score --rm $HF/rm_llama "$TMP/notok.safe"

# ---- safe-rollout on an HF directory (tokenizer.json) and on SmolLM2's GGUF ----------------
safe-rollout --quiet --policy $HF/llama_untied --prompts "$DATA/tinystories/prompts.jsonl" --num-prompts 2 \
    --samples-per-prompt 2 --max-new-tokens 6 --seed 1 -o "$TMP/roll_hf.safe" 2>"$TMP/err"
check rollout_hf_dir sh -c "safe-cat '$TMP/roll_hf.safe' | jq -s -e 'length == 4 and all(.[]; (.response_tokens | length) >= 1)' >/dev/null"
if [ -f "$SMOLLM2" ]; then
    safe-rollout --quiet --policy "$SMOLLM2" --prompts "$DATA/hh/prompts.jsonl" --num-prompts 1 --samples-per-prompt 2 \
        --max-new-tokens 4 --max-prompt-tokens 48 --seed 1 -o "$TMP/roll_smol.safe" 2>"$TMP/err"
    check rollout_smollm2_gguf sh -c "safe-cat '$TMP/roll_smol.safe' | jq -s -e 'length == 2 and all(.[]; (.response_tokens | length) >= 1)' >/dev/null"
    # its tokenizer metadata converts to tokenizer.json + tokenizer_config.json (no tokenizer.gguf),
    # and converting the result again copies them unchanged
    safe-convert --quiet "$SMOLLM2" "$TMP/smol-hf" 2>"$TMP/err" && safe-convert --quiet "$TMP/smol-hf" "$TMP/smol-hf2" 2>>"$TMP/err"
    check convert_smollm2_tokenizer_json sh -c "test ! -e '$TMP/smol-hf/tokenizer.gguf' &&
      jq -e '.model.type == \"BPE\" and (.model.vocab | length) == 49152 and .post_processor == null' '$TMP/smol-hf/tokenizer.json' >/dev/null &&
      jq -e '.eos_token == \"<|im_end|>\" and .add_bos_token == false and (.chat_template | length) > 0' '$TMP/smol-hf/tokenizer_config.json' >/dev/null &&
      cmp -s '$TMP/smol-hf/tokenizer.json' '$TMP/smol-hf2/tokenizer.json' && cmp -s '$TMP/smol-hf/tokenizer_config.json' '$TMP/smol-hf2/tokenizer_config.json'"
    rm -rf "$TMP/smol-hf" "$TMP/smol-hf2"
else
    echo "SKIP rollout_smollm2_gguf convert_smollm2_tokenizer_json: $SMOLLM2 absent (sh tests/setup-smollm2.sh)"
fi
