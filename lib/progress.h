// progress.h — progress on stderr for every tool: a bar with rate and ETA when stderr is a
// terminal (redrawn at most 5 times a second), plain periodic lines otherwise (every 10 s,
// or $SAFE_PROGRESS_INTERVAL seconds), nothing when quiet.
//
//   Progress *p = progress_start("rollout", n_prompts, "prompts", opt_quiet);
//   progress_extra_unit(p, "tok");              // optional second rate, e.g. tokens/s
//   for (...) progress_update(p, done, tokens_so_far);
//   progress_end(p);                            // final line; frees p
#ifndef SAFE_PROGRESS_H
#define SAFE_PROGRESS_H

typedef struct Progress Progress;

// total < 0 when unknown (no bar, no ETA). All functions accept NULL and do nothing.
Progress *progress_start(const char *what, long total, const char *unit, int quiet);
// done: units finished so far; extra: a cumulative second count (tokens, bytes) whose
// rate is shown when progress_extra_unit named it.
void progress_update(Progress *p, long done, double extra);
void progress_extra_unit(Progress *p, const char *unit);
void progress_end(Progress *p);

#endif
