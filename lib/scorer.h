// scorer.h — what safe-score asks for a reward: one scalar per (prompt, response), plus named
// components. Implementations: the VADER lexicon scorer (lib/vader) and an external command
// run as a coprocess; the neural reward model (sequence-classification head) plugs in here.
//
//   Scorer *s = scorer_vader("../shared/data/vader/vader_lexicon.txt");   // or scorer_exec(cmd)
//   ScoreComponents c = {0};
//   double r = scorer_score(s, "id-1", prompt, response, &c);   // c: compound, pos, neg, neu
//   components_free(&c); scorer_free(s);
//
// The exec protocol (JSON lines over the command's stdin/stdout):
//   request   {"id": "...", "prompt": "...", "response": "..."}\n   (jansson-encoded; invalid
//             UTF-8 in the texts is replaced by U+FFFD, since JSON strings must be Unicode)
//   answer    one line per request, in order: a number, or {"reward": x, ...} where other
//             numeric keys become reward components. Non-finite numbers are numbers too:
//             an optional sign and nan, inf or infinity in any case (NaN, Infinity, -Infinity
//             as Python's json writes them; nan, -nan, inf, -inf as C and numpy print them),
//             and JSON numbers beyond the double range (1e999 is +Infinity). A non-finite
//             reward is passed through: safe-critic is the stage that stops on it.
//   The command runs under /bin/sh -c with PYTHONUNBUFFERED=1 in its environment; it must
//   answer each line without waiting for more input (flush after each answer). Its stderr
//   is ours. Requests are written in batches (scorer_set_batch) while answers are read
//   concurrently, so a coprocess that buffers never deadlocks the pipes.
//   Failures end the process through die(), naming the command and the record id:
//     exit 3  the command exits or closes its output early, or sends no answer within the
//             timeout (scorer_set_timeout, default 60 s) — it is then killed;
//     exit 2  an answer that is not JSON, or has no numeric "reward".
#ifndef SAFE_SCORER_H
#define SAFE_SCORER_H

#include <stddef.h>
#include <stdint.h>

typedef struct Scorer Scorer;

// Named reward components of one answer. Zero-initialise; reused across calls (cleared by
// the scorer each time), freed with components_free.
typedef struct {
    int n, cap;
    char **name;
    double *value;
} ScoreComponents;

void components_clear(ScoreComponents *c);
void components_add(ScoreComponents *c, const char *name, double value);
void components_free(ScoreComponents *c);

// One request of a batch. Texts are byte strings with lengths (need not be NUL-terminated).
typedef struct {
    const char *id;  // NUL-terminated, for the protocol and for messages
    const char *prompt;
    size_t prompt_len;
    const char *response;
    size_t response_len;
    const int32_t *tokens;   // prompt + response token ids when the scorer reads tokens, else NULL
    int n_tokens;
} ScoreRequest;

// What the VADER scorer reads: the response alone (default), or prompt and response joined
// (with one space between them when neither side has whitespace there: VADER splits on it).
typedef enum { SCORE_RESPONSE, SCORE_PROMPT_RESPONSE } ScoreField;

#define SCORER_DEFAULT_TIMEOUT 60.0
#define SCORER_DEFAULT_BATCH 16

// The reward model (lib/scorer_rm.c, lib/reward_model.h): a *ForSequenceClassification
// checkpoint directory whose score head is read at the last token of prompt + response.
//   RM_INPUT_TOKENS  the request's tokens (the rollout's prompt_tokens + response_tokens: BOS
//                    and a final EOS as generated); needs the policy's tokenizer
//   RM_INPUT_TEXT    prompt + response text encoded with the reward model's own tokenizer
//                    (special tokens as its tokenizer adds them; no EOS appended)
// Components: "score" (the raw head output, = the reward). Requests of one call are scored
// in batches of `batch` rows.
enum { RM_INPUT_TOKENS = 0, RM_INPUT_TEXT = 1 };
typedef struct {
    int input;              // RM_INPUT_TOKENS or RM_INPUT_TEXT
    int batch;              // rows per forward, >= 1
    int max_length;         // > 0: truncate to this many tokens
    int trunc_side;         // RM_TRUNC_RIGHT (keep the start, HF's default) or RM_TRUNC_LEFT
    const char *tokenizer;  // text input: tokenizer file/dir; NULL: the reward model's own
} ScorerRmOptions;
Scorer *scorer_rm(const char *dir, const ScorerRmOptions *opt);   // loads now; dies (2) on bad input

// A scorer is a table of operations over private state, so new kinds (the reward model)
// live in their own files: fill a ScorerOps and call scorer_new().
typedef struct {
    const char *kind;  // "vader", "exec", ...
    // Score n requests (see scorer_score_batch); die on failure with the exit-code contract.
    void (*score_batch)(void *impl, const ScoreRequest *req, int n, double *reward,
                        ScoreComponents *comp);
    int (*batch)(const void *impl);  // requests worth gathering per call; NULL: 64
    void (*free)(void *impl);        // release impl (and any process or device state)
} ScorerOps;
Scorer *scorer_new(const ScorerOps *ops, void *impl, const char *desc);

Scorer *scorer_vader(const char *lexicon_path);   // dies (2) on a bad lexicon
Scorer *scorer_exec(const char *cmd);             // starts the coprocess now
void scorer_set_field(Scorer *s, ScoreField f);  // VADER only (others: no-op); exec gets both
void scorer_vader_emoji(Scorer *s, const char *emoji_path);  // VADER only: vader_load_emoji()
void scorer_set_timeout(Scorer *s, double seconds);  // exec only (others: no-op): per answer, > 0
void scorer_set_batch(Scorer *s, int k);             // exec only (others: no-op): in flight, >= 1
int scorer_batch(const Scorer *s);                   // how many requests to gather per call
// "vader lexicon=PATH entries=N field=response" / "exec cmd=CMD": for headers and logs.
const char *scorer_describe(const Scorer *s);
const char *scorer_kind(const Scorer *s);            // "vader" or "exec"

// Score n requests: reward[i] and comp[i] (comp may be NULL). For exec, up to
// scorer_batch() requests are in flight at once. Dies on failure (see above).
void scorer_score_batch(Scorer *s, const ScoreRequest *req, int n, double *reward,
                        ScoreComponents *comp);
// One request with NUL-terminated texts.
double scorer_score(Scorer *s, const char *id, const char *prompt, const char *response,
                    ScoreComponents *out);
// exec: closes the coprocess's stdin and waits for it (up to the timeout, at most 10 s, then
// kills it); a non-zero exit status after all answers only warns.
void scorer_free(Scorer *s);

#endif
