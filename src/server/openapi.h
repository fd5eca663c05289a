// The OpenAPI 3.1 description of every route, served at /openapi.json.
#pragma once

#include <nlohmann/json.hpp>

namespace gritserve {

nlohmann::json OpenApiSpec();

}  // namespace gritserve
