#!/usr/bin/env python3
"""gen_vader_ref.py — reference VADER scores for tests/test_vader.c.

Writes
  tests/fixtures/vader_ref.tsv   one line per snippet of
                                 ../shared/data/vader/movieReviewSnippets_GroundTruth.txt: the id
                                 and the *unrounded* compound, pos, neg, neu of vaderSentiment
                                 3.3.2 (Hutto & Gilbert 2014), each as Python repr (shortest
                                 round-trip form of the double);
  tests/fixtures/vader_hand.tsv  hand-written cases, a few per rule: rule, text, the same four;
  tests/fixtures/vader_emoji_subset.txt
                                 the lines of the package's emoji_utf8_lexicon.txt for the
                                 emojis the hand cases use (MIT, cjhutto/vaderSentiment).

Fixture generation only, never needed by the build or the tests:
    pip install vaderSentiment==3.3.2
    python3 tests/gen/gen_vader_ref.py          # from the repository root

polarity_scores() rounds its results (compound to 4 decimals, the others to 3). To get the
unrounded values we shadow the module's `round` with the identity; the script then checks that
rounding them the Python way gives back exactly what the stock polarity_scores returns.
The analyzer is built on our copy of the lexicon (../shared/data/vader/vader_lexicon.txt),
and the script checks that it parses to the same dictionary as the copy shipped in the package
(the two files differ only in line endings: the package's is CRLF without a final newline).
"""
import hashlib
import os
import sys

import vaderSentiment
import vaderSentiment.vaderSentiment as vs

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.normpath(os.path.join(here, "..", ".."))
data = os.environ.get("SAFE_DATA") or os.path.join(root, "..", "shared", "data")
lex_ours = os.path.abspath(os.path.join(data, "vader", "vader_lexicon.txt"))
snippets = os.path.join(data, "vader", "movieReviewSnippets_GroundTruth.txt")
out_path = os.path.join(root, "tests", "fixtures", "vader_ref.tsv")
hand_path = os.path.join(root, "tests", "fixtures", "vader_hand.tsv")
emoji_subset_path = os.path.join(root, "tests", "fixtures", "vader_emoji_subset.txt")
emoji_pkg = os.path.join(os.path.dirname(vs.__file__), "emoji_utf8_lexicon.txt")

# Hand cases: (rule, text). Texts hold no tab or newline.
HAND = [
    ("lexicon", "The book was good."),
    ("lexicon", "The book was bad."),
    ("lexicon", "The book was a book."),
    ("lexicon", "lol ok lmao"),  # duplicated lexicon entries: the later line wins
    ("negation", "The book was not good."),
    ("negation", "The book isn't good."),
    ("negation", "The book aint good"),
    ("negation", "I don't think it's good"),
    ("negation", "Not bad at all"),
    ("negation", "The book was not very good."),
    ("negation", "Sentiment analysis has never been good."),
    ("negation", "Sentiment analysis has never been this good!"),
    ("negation", "It was never so good"),
    ("negation", "Without a doubt, excellent idea."),
    ("negation", "Without a doubt, an excellent idea."),
    ("negation", "It was despite everything good"),
    ("negation", "the movie is this good"),   # reference quirk: "this" before the word x1.25
    ("no", "There is no good answer"),
    ("no", "No problem"),
    ("no", "no"),
    ("no", "no no good"),
    ("no", "I have no hope or joy"),
    ("no", "no love nor joy"),
    ("booster", "The book was very good."),
    ("booster", "The book was extremely bad."),
    ("booster", "The book was slightly good."),
    ("booster", "The book was very very good"),
    ("booster", "really very extremely good"),
    ("booster", "The book was VERY good."),
    ("booster", "The book was SLIGHTLY bad."),
    ("booster", "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!"),
    ("caps", "The book was GOOD."),
    ("caps", "THE BOOK WAS GOOD."),
    ("caps", "VADER is VERY SMART, handsome, and FUNNY."),
    ("caps", "Today SUX!"),
    ("caps", "NO good"),
    ("caps", "NO GOOD at all"),
    ("but", "The plot was good, but the characters are uncompelling and the dialog is not great."),
    ("but", "good but bad"),
    ("but", "good good but bad bad"),   # reference quirk: list.index aliasing
    ("but", "bad but good but bad"),
    ("but", "but"),
    ("kind of", "The book was only kind of good."),
    ("kind of", "The book was kind of bad"),
    ("kind of", "it was sort of good"),
    ("kind of", "it was kinda good"),
    ("kind of", "it was kind-of good"),
    ("kind of", "Today only kinda sux! But I'll get by, lol"),
    ("kind of", "a kind person"),
    ("exclamation", "Good!"),
    ("exclamation", "Good!!"),
    ("exclamation", "Good!!!!"),
    ("exclamation", "Good!!!!!!!"),
    ("exclamation", "Bad!!!"),
    ("exclamation", "book!!!"),
    ("question", "Good?"),
    ("question", "Good??"),
    ("question", "Good???"),
    ("question", "Good????"),
    ("question", "Bad?????"),
    ("question", "Good?!?"),
    ("idiom", "With VADER, sentiment analysis is the shit!"),
    ("idiom", "On the other hand, VADER is quite bad ass"),
    ("idiom", "VADER is such a badass!"),
    ("idiom", "that was the kiss of death for us"),
    ("idiom", "a chocolate cake to die for"),
    ("idiom", "yeah right, like that is good"),
    ("idiom", "we waited at the bus stop happily"),
    ("idiom", "my beating heart is glad"),
    ("idiom", "this plan will cut the mustard"),  # SENTIMENT_LADEN_IDIOMS: unused by the reference
    ("idiom", "we are in the red again"),
    ("least", "Roger Dodger is one of the least compelling variations on this theme."),
    ("least", "Roger Dodger is at least compelling as a variation on the theme."),
    ("least", "least good"),
    ("least", "the very least good"),
    ("tokens", "Make sure you :) or :D today!"),
    ("tokens", "I :-) you, \"good\" (great) 'ok'..."),
    ("tokens", "go! ok? :( (: <3"),
    ("tokens", "!!!"),
    ("tokens", ""),
    ("tokens", "   "),
    ("tokens", "good\u00a0movie\u2003great\u3000nice"),
    ("unicode", "Caf\u00e9 is GOOD"),
    ("unicode", "CAF\u00e9 is GOOD"),
    ("unicode", "\u00c9LAN is GOOD"),
    ("unicode", "\u039a\u0391\u039b\u039f good BAD"),
    ("unicode", "\u041f\u0420\u0418\u0412\u0415\u0422 good BAD"),
    ("unicode", "it was \u212aind of good"),
    ("unicode", "CAF\u00c9 GOOD"),          # all tokens upper: no caps emphasis
    ("unicode", "CAF\u00e9 GOOD"),          # "CAF\u00e9" is not upper: GOOD is emphasised
    ("unicode", "\u039a\u0391\u039b\u039f GOOD"),
    ("unicode", "\u043f\u0440\u0438 GOOD"),
    ("unicode", "\u0130STANBUL GOOD"),
    ("unicode", "na\u00efve GOOD film \u2013 awful"),
    ("emoji", "Catch utf-8 emoji such as \U0001f498 and \U0001f48b and \U0001f601"),
    ("emoji", "I love it\U0001f601"),
    ("emoji", "\U0001f601\U0001f601 sad"),
    ("emoji", "so \u2764 this!"),
    ("emoji", "\U0001f44e not good"),
]
lex_pkg = os.path.join(os.path.dirname(vs.__file__), "vader_lexicon.txt")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


version = getattr(vaderSentiment, "__version__", None)
try:
    from importlib.metadata import version as dist_version
    version = dist_version("vaderSentiment")
except Exception:
    pass
if version != "3.3.2":
    sys.exit(f"need vaderSentiment 3.3.2, found {version}: pip install vaderSentiment==3.3.2")

stock = vs.SentimentIntensityAnalyzer()                  # the package's own lexicon
ours = vs.SentimentIntensityAnalyzer(lexicon_file=lex_ours)  # absolute path: join() keeps it
print(f"lexicon ours    {sha256(lex_ours)}  {lex_ours}", file=sys.stderr)
print(f"lexicon package {sha256(lex_pkg)}  {lex_pkg}", file=sys.stderr)
if stock.lexicon != ours.lexicon:
    sys.exit("the package lexicon and ours parse to different dictionaries")
print(f"lexicons parse identically ({len(ours.lexicon)} distinct entries)", file=sys.stderr)

with open(snippets, "rb") as f:
    raw = f.read().decode("utf-8")
lines = raw.split("\n")
rows = []
for n, line in enumerate(lines, 1):
    line = line.rstrip("\r")
    if not line:
        continue
    sid, _rating, text = line.split("\t", 2)
    want = stock.polarity_scores(text)          # rounded, as the reference returns
    vs.round = lambda x, nd=None: x             # unrounded: shadow the builtin in the module
    try:
        got = ours.polarity_scores(text)
    finally:
        del vs.round
    for k, nd in (("compound", 4), ("pos", 3), ("neg", 3), ("neu", 3)):
        if round(got[k], nd) != want[k]:
            sys.exit(f"line {n}: round({got[k]!r}, {nd}) != {want[k]!r}")
    rows.append(f"{sid}\t{got['compound']!r}\t{got['pos']!r}\t{got['neg']!r}\t{got['neu']!r}\n")

with open(out_path, "w", newline="\n") as f:
    f.write(f"# vaderSentiment {version} on Python {sys.version.split()[0]}: "
            "id, compound, pos, neg, neu (unrounded, repr)\n")
    f.writelines(rows)
print(f"wrote {len(rows)} rows to {out_path}", file=sys.stderr)

# Hand cases, scored by the stock analyzer (with its emoji lexicon).
hand_rows = []
used = set()
for rule, text in HAND:
    assert "\t" not in text and "\n" not in text
    used.update(ch for ch in text if ch in stock.emojis)
    want = stock.polarity_scores(text)
    vs.round = lambda x, nd=None: x
    try:
        got = stock.polarity_scores(text)
    finally:
        del vs.round
    for k, nd in (("compound", 4), ("pos", 3), ("neg", 3), ("neu", 3)):
        assert round(got[k], nd) == want[k]
    hand_rows.append(f"{rule}\t{text}\t{got['compound']!r}\t{got['pos']!r}\t{got['neg']!r}\t{got['neu']!r}\n")
with open(hand_path, "w", encoding="utf-8", newline="\n") as f:
    f.write(f"# vaderSentiment {version}: rule, text, compound, pos, neg, neu (unrounded, repr)\n")
    f.writelines(hand_rows)
with open(emoji_pkg, encoding="utf-8") as f:
    emoji_lines = f.read().rstrip("\n").split("\n")
with open(emoji_subset_path, "w", encoding="utf-8", newline="\n") as f:
    for line in emoji_lines:
        if line.strip().split("\t")[0] in used:
            f.write(line.strip() + "\n")
print(f"wrote {len(hand_rows)} hand cases to {hand_path}, {len(used)} emojis to {emoji_subset_path}",
      file=sys.stderr)
