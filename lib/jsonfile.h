// jsonfile.h — read JSON files the way Hugging Face writes them.
//
// jansson refuses integers beyond int64 ("too big integer"), and transformers writes one into
// most tokenizer_config.json files ("model_max_length": 1000000000000000019884624838656).
// json_load_lenient reads such literals as reals; every other value is read unchanged.
#ifndef SAFE_JSONFILE_H
#define SAFE_JSONFILE_H

#include <jansson.h>
#include <stddef.h>

// Parse text[0..n) or a file. NULL on error, with err filled as jansson does.
json_t *json_loadb_lenient(const char *text, size_t n, json_error_t *err);
json_t *json_load_file_lenient(const char *path, json_error_t *err);

#endif
