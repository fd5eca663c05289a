#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace gritserve {

// Registers the embed/generate/tokenize/make-checkpoint subcommands; the one
// that parses sets `action`, which main runs after parsing.
void AddCliSubcommands(CLI::App& app, std::function<void()>& action);

}  // namespace gritserve
