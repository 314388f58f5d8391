#!/usr/bin/env python3
"""gen_tokenizer_ref.py - reference token ids for tests/test_tokenizer.c.

An independent Python implementation of the llama2.c (sentencepiece-style) BPE encoder:
  [BOS] + [" " dummy prefix if text != ""] + one id per Unicode code point (its UTF-8 bytes
  looked up in the vocabulary, else byte-fallback ids byte+3), then repeatedly replace the
  adjacent pair whose concatenated piece string has the highest score (leftmost on ties).

Usage (from the repository root):
  python3 tests/gen/gen_tokenizer_ref.py ../shared/data/stories260K/tok512.bin \
      ../shared/data/tinystories/prompts.jsonl > tests/fixtures/tokenizer_ref.jsonl
"""
import json
import struct
import sys


def load_vocab(path):
    data = open(path, "rb").read()
    pos = 4
    pieces, scores = [], []
    while pos < len(data):
        score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        pieces.append(data[pos:pos + n])
        scores.append(score)
        pos += n
    return pieces, scores


def encode(text, pieces, scores, bos=True):
    index = {}
    for i, p in enumerate(pieces):
        index.setdefault(p, i)
    ids = [1] if bos else []
    if text:
        ids.append(index[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        if b in index:
            ids.append(index[b])
        else:
            ids.extend(x + 3 for x in b)
    while True:
        best = None  # (score, position, id)
        for i in range(len(ids) - 1):
            merged = pieces[ids[i]] + pieces[ids[i + 1]]
            j = index.get(merged)
            if j is not None and (best is None or scores[j] > best[0]):
                best = (scores[j], i, j)
        if best is None:
            break
        _, i, j = best
        ids[i:i + 2] = [j]
    return ids


def main():
    pieces, scores = load_vocab(sys.argv[1])
    texts = []
    seen = set()
    with open(sys.argv[2], encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)["prompt"]
            if p not in seen:
                seen.add(p)
                texts.append(p)
    texts = texts[:40]
    # edge cases: empty, spaces, digits and punctuation, non-ASCII (byte fallback), newlines
    texts += [
        "", " ", "  two leading spaces", "trailing space ", "a", "Hello, World!",
        "The year 2024 had 366 days; 12 months.", "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
        "emoji \U0001F600 and \u4e2d\u6587", "line one\nline two\n", "tab\tseparated",
        "\"Why are you sad, Roxy?\"", "<0x41> is not a byte token in text",
    ]
    for t in texts:
        print(json.dumps({"text": t, "ids": encode(t, pieces, scores)}, ensure_ascii=True))


if __name__ == "__main__":
    main()
