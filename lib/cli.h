// cli.h — option values for the tools: parse or die with exit 1 naming the option.
#ifndef SAFE_CLI_H
#define SAFE_CLI_H

#include <stdint.h>

float opt_float(const char *opt, const char *s);      // finite number
int opt_int(const char *opt, const char *s);          // integer within +-1e9
uint64_t opt_u64(const char *opt, const char *s);     // non-negative integer (seeds)

#endif
