// jsonfile.c — JSON with integers too big for int64 read as reals.
#include "jsonfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"   // xmalloc

// Copy text, appending ".0" to integer literals of more than 18 digits outside strings.
static char *widen_big_ints(const char *s, size_t n, size_t *out_n) {
    char *out = xmalloc(n + n / 8 + 16);
    size_t cap = n + n / 8 + 16, o = 0, i = 0;
    int in_str = 0;
    while (i < n) {
        char c = s[i];
        if (in_str) {
            out[o++] = c;
            if (c == '\\' && i + 1 < n) out[o++] = s[++i];
            else if (c == '"') in_str = 0;
            i++;
        } else if (c == '"') {
            in_str = 1;
            out[o++] = c;
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i, digits = 0;
            int is_int = 1;
            while (j < n && strchr("+-0123456789.eE", s[j])) {
                if (s[j] >= '0' && s[j] <= '9') digits++;
                if (s[j] == '.' || s[j] == 'e' || s[j] == 'E') is_int = 0;
                j++;
            }
            if (o + (j - i) + 2 >= cap) out = xrealloc(out, cap = 2 * cap + (j - i) + 2);
            memcpy(out + o, s + i, j - i);
            o += j - i;
            if (is_int && digits > 18) {
                out[o++] = '.';
                out[o++] = '0';
            }
            i = j;
        } else {
            out[o++] = c;
            i++;
        }
        if (o + 4 >= cap) out = xrealloc(out, cap *= 2);
    }
    *out_n = o;
    return out;
}

json_t *json_loadb_lenient(const char *text, size_t n, json_error_t *err) {
    size_t wn;
    char *w = widen_big_ints(text, n, &wn);
    json_t *j = json_loadb(w, wn, 0, err);
    free(w);
    return j;
}

json_t *json_load_file_lenient(const char *path, json_error_t *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return json_load_file(path, 0, err);   // jansson's own "cannot open" message
    size_t cap = 1 << 16, n = 0, got;
    char *buf = xmalloc(cap);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = xrealloc(buf, cap *= 2);
    }
    fclose(f);
    json_t *j = json_loadb_lenient(buf, n, err);
    free(buf);
    return j;
}
