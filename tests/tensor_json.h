// Reference tensors stored as JSON arrays in the fixtures.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <vector>

namespace gritserve::testing {

// [[float]] -> [T, H], [float] -> [H]
inline at::Tensor TensorFromJson(const nlohmann::json& j) {
  if (j[0].is_array()) {
    std::vector<at::Tensor> rows;
    for (const auto& r : j) rows.push_back(TensorFromJson(r));
    return at::stack(rows);
  }
  return at::tensor(j.get<std::vector<float>>(), at::kFloat);
}

}  // namespace gritserve::testing
