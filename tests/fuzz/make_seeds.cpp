// Writes the seed corpus of the load() fuzzer: for each composition of compositions.hpp, valid
// checkpoints after 0, 1, 4 steps and right after a skipped step, each prefixed with the
// composition's byte. Usage: flatmin_fuzz_seeds DIR
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "compositions.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  int written = 0;
  for (int k = 0; k < flatmin_fuzz::composition_count; ++k) {
    flatmin_fuzz::model m;
    auto opt = flatmin_fuzz::make(k, m);
    const char* scripts[] = {"", "n", "nnnn", "nns"};
    std::size_t done = 0;
    for (const char* script : scripts) {
      for (const char* c = script; *c; ++c) opt->step(m, done++, *c == 's');
      std::stringstream ss;
      opt->save(ss);
      const std::string name =
          std::string(argv[1]) + "/seed_" + std::to_string(k) + "_" + std::to_string(written);
      std::ofstream f(name, std::ios::binary);
      f.put(static_cast<char>(k));
      f << ss.str();
      if (!f) return 1;
      ++written;
    }
  }
  std::printf("wrote %d seeds\n", written);
  return 0;
}
