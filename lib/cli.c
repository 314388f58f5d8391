// cli.c — strict option parsing: the whole argument must be a number of the right kind.
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "common.h"   // die, EXIT_USAGE

float opt_float(const char *opt, const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || !isfinite(v)) die(EXIT_USAGE, "--%s needs a finite number, got '%s'", opt, s);
    return (float)v;
}

int opt_int(const char *opt, const char *s) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < -1000000000L || v > 1000000000L)
        die(EXIT_USAGE, "--%s needs an integer, got '%s'", opt, s);
    return (int)v;
}

uint64_t opt_u64(const char *opt, const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == 0 || *s == '-' || *end != 0 || errno == ERANGE)
        die(EXIT_USAGE, "--%s needs a non-negative integer, got '%s'", opt, s);
    return (uint64_t)v;
}
