// vader.h — VADER rule-based sentiment (Hutto & Gilbert, ICWSM 2014), a C port of the rules
// of vaderSentiment 3.3.2 (vaderSentiment/vaderSentiment.py, SentimentIntensityAnalyzer).
//
//   Vader *v = vader_load("../shared/data/vader/vader_lexicon.txt");   // dies (2) on a bad file
//   VaderScores s; vader_score(v, text, strlen(text), &s);             // s.compound in [-1, 1]
//   vader_free(v);
//
// What is ported, rule by rule (constants as in the reference):
//   tokens      split on (Python) whitespace; ASCII punctuation stripped from both ends of a
//               token unless that leaves <= 2 code points (then the token is kept whole: ":)")
//   lexicon     mean valence of the lowercased token; later duplicate entries win
//   boosters    "very", "extremely", ... +0.293, dampeners "kind of", "slightly", ... -0.293,
//               sign following the word's valence, decayed x0.95 / x0.9 at distance 2 / 3
//   caps        ALL-CAPS word +-0.733, only when the text mixes ALL-CAPS and other tokens
//   negation    a negation word ("not", "never", any "n't" word, ...) 1-3 tokens before: x-0.74;
//               "never so/this" x1.25; "without doubt" left alone; "least" (not "at/very least")
//   "no"        "no" before a lexicon word is not scored itself and negates the next 1-3 words
//   "but"       valences before the first "but" x0.5, after it x1.5 (with the reference's quirk:
//               positions found by list.index(value), so equal valences alias)
//   "kind of"   "kind" followed by "of" is neutral; the bigram dampens via the idiom check
//   idioms      SPECIAL_CASES ("the shit", "bad ass", "kiss of death", ...) replace the valence;
//               the reference's SENTIMENT_LADEN_IDIOMS are dead code there (never called), so
//               they are not applied here either
//   punctuation "!" x0.292 each up to 4; "?" 0.18 each when 2 or 3, 0.96 for more
//   compound    sum / sqrt(sum^2 + 15); pos/neg/neu shares of (valence +- 1) sums and neutrals
//   emoji       only with vader_load_emoji(): each code point found in emoji_utf8_lexicon.txt
//               is replaced by its description, as the reference does. That file is not in
//               ../shared/data, so by default emojis are left as they are (none of the 10,605
//               ICWSM movie snippets contains one).
// The reference's known quirks are kept on purpose (the "so/this" 1.25 boost at distance 3
// from operator precedence, the list.index aliasing in "but", "NO" caps on a zero valence).
//
// Differences from the reference, all outside ASCII text:
//   - lowercasing and the ALL-CAPS test know the cased letters of Latin-1, Latin Extended-A,
//     Greek and Cyrillic (and the Kelvin sign -> "k"); other scripts count as uncased, where
//     Python uses the full Unicode tables (Greek final sigma and U+0130 are not special-cased
//     beyond that). The lexicon is ASCII apart from two unmatched "Þ" emoticons, so only the
//     ALL-CAPS test can tell, and only for such scripts.
//   - invalid UTF-8 bytes (Python would never see them) count as single uncased characters.
//   - a lexicon valence must be a finite number (Python's float() would also take nan/inf).
// Results are not rounded: the reference rounds compound to 4 and pos/neg/neu to 3 decimals on
// the way out; vader_round() does exactly that (Python's round, half-even on the exact value).
#ifndef SAFE_VADER_H
#define SAFE_VADER_H

#include <stddef.h>

// Constants of the reference, empirically derived by Hutto & Gilbert.
#define VADER_B_INCR 0.293      // booster word
#define VADER_B_DECR (-0.293)   // dampener word
#define VADER_C_INCR 0.733      // ALL-CAPS emphasis
#define VADER_N_SCALAR (-0.74)  // negation
#define VADER_ALPHA 15.0        // compound = x / sqrt(x^2 + alpha)

typedef struct Vader Vader;

typedef struct {
    double compound;  // normalised sum of valences, [-1, 1]
    double pos, neg, neu;  // proportions, summing to 1 (all 0 for text without tokens)
} VaderScores;

// Read a lexicon (token TAB mean TAB ...). Dies with exit 2 naming the file (and the line, for
// a malformed one) when it cannot be read or parsed; the message hints at $SAFE_DATA.
Vader *vader_load(const char *lexicon_path);
// Optional: emoji_utf8_lexicon.txt of the reference (emoji TAB description). Returns the number
// of single-code-point entries used; dies like vader_load.
size_t vader_load_emoji(Vader *v, const char *emoji_path);
size_t vader_lexicon_size(const Vader *v);   // distinct lexicon tokens
// Score `len` bytes of UTF-8 text (need not be NUL-terminated). Thread-safe on a loaded Vader.
void vader_score(const Vader *v, const char *text, size_t len, VaderScores *out);
// Round as polarity_scores() returns them: compound to 4 decimals, pos/neg/neu to 3.
void vader_round(VaderScores *s);
void vader_free(Vader *v);

#endif
