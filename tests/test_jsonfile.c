// test_jsonfile.c — HF-style JSON with integers beyond int64 (tokenizer_config.json).
#include "test.h"

#include <string.h>

#include "jsonfile.h"

TEST(big_integer_read_as_real) {
    const char *text = "{\"model_max_length\": 1000000000000000019884624838656, \"id\": 5, "
                       "\"neg\": -123456789012345678901, \"s\": \"99999999999999999999 \\\" 1\", \"f\": 1.5e3}";
    json_error_t err;
    json_t *j = json_loadb_lenient(text, strlen(text), &err);
    CHECK(j != NULL, "parse failed: %s", err.text);
    if (!j) return;
    json_t *big = json_object_get(j, "model_max_length");
    CHECK(json_is_real(big) && json_real_value(big) > 9.9e29, "big integer not read as a real");
    CHECK(json_is_integer(json_object_get(j, "id")) && json_integer_value(json_object_get(j, "id")) == 5, "small integer changed");
    CHECK(json_is_real(json_object_get(j, "neg")) && json_real_value(json_object_get(j, "neg")) < -1e20, "negative big integer");
    CHECK(strcmp(json_string_value(json_object_get(j, "s")), "99999999999999999999 \" 1") == 0, "string changed: %s",
          json_string_value(json_object_get(j, "s")));
    CHECK(json_real_value(json_object_get(j, "f")) == 1500.0, "real changed");
    json_decref(j);
}

TEST(plain_jansson_refuses_it) {
    // the reason this file exists: jansson alone stops on such a literal
    json_error_t err;
    json_t *j = json_loads("{\"n\": 1000000000000000019884624838656}", 0, &err);
    CHECK(j == NULL, "jansson accepted a >int64 integer; jsonfile.c may be unnecessary now");
    json_decref(j);
}

TEST(syntax_errors_still_reported) {
    json_error_t err;
    json_t *j = json_loadb_lenient("{\"a\": [1, 2", 11, &err);
    CHECK(j == NULL && err.line == 1, "broken JSON accepted");
}

int main(void) {
    RUN(big_integer_read_as_real);
    RUN(plain_jansson_refuses_it);
    RUN(syntax_errors_still_reported);
    return test_summary();
}
