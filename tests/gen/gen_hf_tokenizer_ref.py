#!/usr/bin/env python3
r"""gen_hf_tokenizer_ref.py - tokenizer.json fixtures and reference ids for tests/test_hf_tokenizer.c.

No hub downloads: small BPE tokenizers are TRAINED here with the `tokenizers` library on the
public texts in ../shared/data, each configured with its family's normalizer, pre-tokenizer,
post-processor and decoder exactly as that family's tokenizer.json has them:

  gpt2    ByteLevel(add_prefix_space=false, use_regex=true) pre-tokenizer, ByteLevel decoder,
          merges stored as "a b" strings (the old format); <|endoftext|> in the model vocab,
          plus added tokens that exercise lstrip (<|mask|>), rstrip (<|sep|>) and a
          non-special single_word token ("Lucy").
  qwen2   NFC normalizer, Split(Qwen2 regex, Isolated) + ByteLevel(use_regex=false), merges
          as ["a", "b"] pairs; <|endoftext|>, <|im_start|>, <|im_end|> added after the vocab.
  llama3  Split(Llama 3 regex) + ByteLevel(use_regex=false), ignore_merges=true (with three
          vocabulary entries no merge reaches, as in Llama 3's tiktoken-made vocabulary),
          TemplateProcessing "<|begin_of_text|> $A", Llama 3 special tokens.
  llama2  sentencepiece-style BPE: normalizer Prepend("▁") + Replace(" ", "▁"), no
          pre-tokenizer, byte_fallback with <0x00>..<0xFF> at ids 3..258, unk <unk>,
          TemplateProcessing "<s> $A", decoder Replace/ByteFallback/Fuse/Strip.
  variants (subset of the texts: every edge case and every 10th other text; ref lines start
          with "@INDEX "): 800-token tokenizers that exercise the rest of the pipeline:
    metaspace        Metaspace(prepend_scheme=first, split=false) pre-tokenizer, no normalizer
                     (transformers' non-legacy Llama conversion), byte fallback, Strip decoder
    metaspace_split  Metaspace(always, split=true), Metaspace decoder, unk without fuse_unk
    mixed            NFKC + Lowercase + Replace normalizers, Digits(runs), MergedWithPrevious,
                     MergedWithNext, WhitespaceSplit, Punctuation, ByteLevel(add_prefix_space), normalized
                     and single_word added tokens
    mixed2           NFD + Replace(Regex), Split(\w+...), Whitespace, Contiguous, inverted
                     MergedWithPrevious, an lstrip+rstrip special token
  tok512.gguf  the llama2.c stories260K tokenizer (tok512.bin) written as a GGUF "llama"
          (sentencepiece) tokenizer, pieces with "▁" for " ": the C test checks that the GGUF
          backend encodes like the llama2.c backend reading tok512.bin (no reference ids).
  smollm2 (optional) the real 49152-token SmolLM2 tokenizer read from the GGUF file's metadata
          (Digits(individual) + ByteLevel, as SmolLM2's tokenizer.json), when the GGUF is
          there (see below); its ids are committed, the GGUF is not.

Texts (tests/fixtures/tokenizers/texts.jsonl): all TinyStories prompts, the first 300 HH
prompts, the first 1000 VADER movie-review snippets (line ending stripped), and every case of
tests/fixtures/tokenizer_edge.txt.

Per tokenizer NAME: tests/fixtures/tokenizers/NAME/tokenizer.json (+ tokenizer_config.json) and
NAME.ref: one line per text, the ids of encode(text) (add_special_tokens=True) separated by
spaces; when decode(ids, skip_special_tokens=True) differs from the text, a tab and the decoded
text as a JSON string follow.

Usage (from the repository root; fixture generation only, `make test` stays offline):
  python3 -m pip install tokenizers==0.23.3 gguf==0.19.0     # the versions the fixtures come from
  sh tests/setup-smollm2.sh                                  # optional: models/SmolLM2-135M-Instruct.Q4_1.gguf
  python3 tests/gen/gen_hf_tokenizer_ref.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]
Training and the ids are deterministic: a rerun with the same versions rewrites identical files.
"""
import argparse
import json
import os
import re
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DATA = os.environ.get("SAFE_DATA", os.path.join(ROOT, "..", "shared", "data"))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
EDGE = os.path.join(ROOT, "tests", "fixtures", "tokenizer_edge.txt")

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
VOCAB = 3000


# ---------------------------------------------------------------------------- texts

def unescape(line):
    if line == r"\e":
        return ""
    out, i = [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            n = line[i + 1]
            if n in "ntr\\":
                out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[n])
                i += 2
                continue
            m = re.match(r"u\{([0-9a-fA-F]+)\}", line[i + 1:])
            if m:
                out.append(chr(int(m.group(1), 16)))
                i += 1 + m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def load_texts():
    texts = []
    with open(os.path.join(DATA, "tinystories", "prompts.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            texts.append((r["id"], r["prompt"]))
    with open(os.path.join(DATA, "hh", "prompts.jsonl"), encoding="utf-8") as f:
        for k, line in enumerate(f):
            if k == 300:
                break
            r = json.loads(line)
            texts.append((r["id"], r["prompt"]))
    with open(os.path.join(DATA, "vader", "movieReviewSnippets_GroundTruth.txt"), "rb") as f:
        lines = f.read().decode("utf-8").split("\r\n")
    for line in lines[:1000]:
        sid, _, sentence = line.split("\t", 2)
        texts.append(("vader-" + sid, sentence))
    with open(EDGE, encoding="utf-8") as f:
        k = 0
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                continue
            k += 1
            texts.append(("edge-%02d" % k, unescape(line)))
    return texts


def corpus(edge=True):
    """Training text: stories, all HH prompts, all VADER snippets, the edge cases."""
    with open(os.path.join(DATA, "tinystories", "stories.txt"), encoding="utf-8") as f:
        for story in f.read().split("<|endoftext|>"):
            if story.strip():
                yield story.strip()
    with open(os.path.join(DATA, "hh", "prompts.jsonl"), encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["prompt"]
    with open(os.path.join(DATA, "vader", "movieReviewSnippets_GroundTruth.txt"), "rb") as f:
        for line in f.read().decode("utf-8").split("\r\n"):
            yield line.split("\t", 2)[2]
    with open(EDGE, encoding="utf-8") as f:
        for line in f:
            if edge and not line.startswith("#"):
                yield unescape(line.rstrip("\n"))


# ---------------------------------------------------------------------------- tokenizers

def byte_level_trainer(specials):
    return trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=specials,
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)


def make_gpt2():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(corpus(), byte_level_trainer(["<|endoftext|>"]))
    tok.add_special_tokens([AddedToken("<|mask|>", lstrip=True, rstrip=False, normalized=False, special=True),
                            AddedToken("<|sep|>", lstrip=False, rstrip=True, normalized=False, special=True)])
    tok.add_tokens([AddedToken("Lucy", single_word=True, normalized=True, special=False)])
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "add_bos_token": False, "tokenizer_class": "GPT2Tokenizer"}
    return tok, config, "strings"


def make_qwen2():
    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.train_from_iterator(corpus(), byte_level_trainer([]))
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True)
                            for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "tokenizer_class": "Qwen2Tokenizer", "errors": "replace"}
    return tok, config, "pairs"


def make_llama3():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.train_from_iterator(corpus(), byte_level_trainer([]))
    # vocabulary entries no merge reaches (as in tiktoken-converted vocabularies): only
    # ignore_merges emits them, for a pre-token that is exactly one of them
    j = json.loads(tok.to_str())
    for w in ["Ġsupercalifragilisticexpialidocious", "ĠAntidisestablishmentarianism", "Ġupon"]:
        if w not in j["model"]["vocab"]:
            j["model"]["vocab"][w] = len(j["model"]["vocab"])
    tok = Tokenizer.from_str(json.dumps(j))
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_2|>", "<|eot_id|>"]
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config, "pairs"


def make_llama2():
    # train on whitespace-split "▁word" pieces, then lay the vocabulary out as Llama 2's:
    # <unk> <s> </s>, the 256 byte tokens, then the learned pieces, and drop the pre-tokenizer
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 256, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=400, show_progress=False)
    trainer_tok.train_from_iterator(corpus(), trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", 1)])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
              "add_bos_token": True, "add_eos_token": False, "legacy": True,
              "tokenizer_class": "LlamaTokenizer"}
    return tok, config, "pairs"


def write_tok512_gguf(path):
    import struct
    import gguf
    data = open(os.path.join(DATA, "stories260K", "tok512.bin"), "rb").read()
    pos, pieces, scores = 4, [], []
    while pos < len(data):
        score, n = struct.unpack_from("<fi", data, pos)
        pieces.append(data[pos + 8:pos + 8 + n].decode("utf-8").replace(" ", "\u2581"))
        scores.append(score)
        pos += 8 + n
    types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 259)   # unk, control, bytes, normal
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("  tok512   %d pieces -> %s" % (len(pieces), os.path.relpath(path, ROOT)))


def sp_layout(trained, specials=("<unk>", "<s>", "</s>")):
    """vocab and merges of a trained Metaspace BPE laid out as Llama 2's: specials, 256 bytes, pieces"""
    learned = json.loads(trained.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in learned["merges"]]
    return vocab, merges


def train_metaspace(vocab_size):
    # without the edge cases: their emoji, CJK, ... are then unknown (unk, or byte fallback)
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    t.train_from_iterator(corpus(edge=False), trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, limit_alphabet=400,
                                                        special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    return t


def make_metaspace():
    vocab, merges = sp_layout(train_metaspace(800))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "legacy": False, "add_bos_token": True}, "pairs"


def make_metaspace_split():
    trained = train_metaspace(800)
    j = json.loads(trained.to_str())["model"]
    tok = Tokenizer(models.BPE(vocab=j["vocab"], merges=[tuple(m) for m in j["merges"]], unk_token="<unk>",
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in ["<unk>", "<s>", "</s>"]])
    return tok, {"eos_token": "</s>"}, "pairs"


def make_mixed():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace("``", '"')])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex("[,;:]"), behavior="merged_with_next"),
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=800, min_frequency=2, show_progress=False,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken("[name]", normalized=True, special=False)])
    tok.add_special_tokens([AddedToken("<SEP>", normalized=True, special=True),
                            AddedToken("<|endoftext|>", normalized=False, special=True, single_word=True)])
    return tok, {"eos_token": "<|endoftext|>"}, "pairs"


def make_mixed2():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Replace(Regex(" {2,}|\t"), "_")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+"), behavior="isolated"),
        pre_tokenizers.Whitespace(),
        pre_tokenizers.Split("e", behavior="contiguous"),
        pre_tokenizers.Split(Regex("[aeiou]"), behavior="merged_with_previous", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=800, min_frequency=2, show_progress=False,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken("<|im_end|>", normalized=False, special=True, lstrip=True, rstrip=True)])
    return tok, {"eos_token": "<|im_end|>"}, "pairs"


def smollm2_from_gguf(path):
    """SmolLM2's tokenizer rebuilt from the GGUF metadata, configured as its tokenizer.json."""
    import gguf
    r = gguf.GGUFReader(path)

    def field(name):
        f = r.fields[name]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [f.parts[i][0].item() for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return f.parts[f.data[0]][0].item()

    assert field("tokenizer.ggml.model") == "gpt2", field("tokenizer.ggml.model")
    tokens, types, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                            for i in range(len(tokens)) if types[i] == 3])
    return tok, "pre=%s, %d tokens, %d merges" % (field("tokenizer.ggml.pre"), len(tokens), len(merges))


# ---------------------------------------------------------------------------- output

def save(name, tok, config, merges_form):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    j = json.loads(tok.to_str())
    if merges_form == "strings":   # the old tokenizer.json form: "a b"
        j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))   # what the C side reads


def write_ref(name, tok, texts, subset=False):
    n_ids = n_diff = n = 0
    with open(os.path.join(OUT, name + ".ref"), "w", encoding="utf-8") as f:
        for k, (tid, text) in enumerate(texts):
            if subset and not (tid.startswith("edge-") or k % 10 == 0):
                continue
            n += 1
            ids = tok.encode(text).ids
            back = tok.decode(ids, skip_special_tokens=True)
            n_ids += len(ids)
            line = ("@%d " % k if subset else "") + " ".join(map(str, ids))
            if back != text:
                n_diff += 1
                line += "\t" + json.dumps(back, ensure_ascii=True)
            f.write(line + "\n")
    print("  %-15s %6d texts %7d ids, decode != text for %d" % (name, n, n_ids, n_diff))


def main():
    import tokenizers
    if tokenizers.__version__ != "0.23.3":
        print("note: tokenizers %s, the committed fixtures come from 0.23.3" % tokenizers.__version__)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="SmolLM2 GGUF file: also write smollm2.ref from its tokenizer")
    args = ap.parse_args()
    texts = load_texts()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "texts.jsonl"), "w", encoding="utf-8") as f:
        for tid, text in texts:
            f.write(json.dumps({"id": tid, "text": text}, ensure_ascii=False) + "\n")
    print("%d texts -> %s" % (len(texts), os.path.relpath(os.path.join(OUT, "texts.jsonl"), ROOT)))
    for name, make in [("gpt2", make_gpt2), ("qwen2", make_qwen2), ("llama3", make_llama3), ("llama2", make_llama2)]:
        tok, config, form = make()
        tok = save(name, tok, config, form)
        write_ref(name, tok, texts)
    for name, make in [("metaspace", make_metaspace), ("metaspace_split", make_metaspace_split),
                       ("mixed", make_mixed), ("mixed2", make_mixed2)]:
        tok, config, form = make()
        tok = save(name, tok, config, form)
        write_ref(name, tok, texts, subset=True)
    write_tok512_gguf(os.path.join(OUT, "tok512.gguf"))
    if args.gguf:
        tok, info = smollm2_from_gguf(args.gguf)
        print("  smollm2: %s" % info)
        write_ref("smollm2", tok, texts)


if __name__ == "__main__":
    sys.exit(main())
