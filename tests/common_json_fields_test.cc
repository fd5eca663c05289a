// JsonFields, the one accessor family: a request's bad field is the client's
// (400 wrong type, 422 out of range), a file's is a LoadError naming the file.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "gritserve/common/json_fields.h"

namespace gritserve {
namespace {

using nlohmann::json;

void ExpectError(const std::function<void()>& fn, ErrorKind kind, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(JsonFields, RequestFieldsAndTheirErrors) {
  const json j = {{"s", "x"},        {"b", true},    {"i", 7},  {"f", 16.0},
                  {"big", 1e300},    {"n", 0.5},     {"u", -1}, {"list", {"a", "b"}},
                  {"null", nullptr}, {"bad", {1, 2}}};
  const JsonFields f = JsonFields::Request(j);
  EXPECT_EQ(*f.String("s"), "x");
  EXPECT_TRUE(*f.Bool("b"));
  EXPECT_EQ(*f.Int("i", 0, 10), 7);
  EXPECT_EQ(*f.Int("f", 0, 100), 16);  // an integral float is an integer
  EXPECT_DOUBLE_EQ(*f.Number("n", 0, 1), 0.5);
  EXPECT_EQ(*f.Uint("u"), UINT64_MAX);  // a seed wraps
  EXPECT_EQ(f.StringList("s")->size(), 1u);
  EXPECT_EQ(f.StringList("list")->size(), 2u);
  EXPECT_FALSE(f.String("null"));  // null is absent
  EXPECT_FALSE(f.Int("missing"));
  ExpectError([&] { f.String("i"); }, ErrorKind::kInvalidRequest, "'i' must be a string");
  ExpectError([&] { f.Int("n"); }, ErrorKind::kInvalidRequest, "'n' must be an integer");
  ExpectError([&] { f.Int("i", 8, 9); }, ErrorKind::kUnprocessable, "'i' must be between 8 and 9");
  ExpectError([&] { f.Int("big", 0, 10); }, ErrorKind::kUnprocessable, "between 0 and 10");
  ExpectError([&] { f.StringList("bad"); }, ErrorKind::kInvalidRequest, "list of strings");
  ExpectError([&] { f.StringList("list", 1); }, ErrorKind::kTooLarge, "more than 1 items");
  ExpectError([&] { f.RequireString("missing"); }, ErrorKind::kInvalidRequest, "'missing'");
}

TEST(JsonFields, FileFieldsNameTheFileAndTheValue) {
  const json j = {{"layers", "two"}, {"f", 2.0}, {"huge", 18446744073709551615ULL}};
  const JsonFields f = JsonFields::File(j, "config.json");
  ExpectError([&] { f.Int("layers"); }, ErrorKind::kLoad,
              "config.json: key 'layers' must be an integer, got \"two\"");
  ExpectError([&] { f.Int("f"); }, ErrorKind::kLoad, "must be an integer, got 2.0");
  ExpectError([&] { f.Int("huge"); }, ErrorKind::kLoad, "'huge' is too large");
  ExpectError([&] { f.RequireInt("hidden_size"); }, ErrorKind::kLoad,
              "config.json: missing required key 'hidden_size'");
  const json rope = {{"factor", "x"}};
  const JsonFields nested = f.Nested(rope);
  ExpectError([&] { nested.Number("factor"); }, ErrorKind::kLoad, "config.json: key 'factor'");
}

}  // namespace
}  // namespace gritserve
