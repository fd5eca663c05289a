// The OpenAPI 3.1 description of every route, served at /openapi.json.
#pragma once

#include <nlohmann/json.hpp>

namespace gritserve {

nlohmann::json OpenApiSpec();

// The collection routes (openapi_collections.cc): their schemas, with
// "retrieve"/"retrieved" added to the generation schemas, and their paths.
void AddCollectionSchemas(nlohmann::json& schemas);
void AddCollectionPaths(nlohmann::json& paths);

}  // namespace gritserve
